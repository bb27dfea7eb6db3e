"""tunelab studio: one job queue, OpenAI's fine-tuning jobs API on the tunelab server, and a web UI.

  store.py        the queue's database (SQLite by default, PostgreSQL by URL): jobs, events, files, checkpoints
  queue.py        claims queued jobs, trains each in its own process (worker.py), cancels, resumes after restarts
  submit.py       run configs into the queue (the new-run form, `tunelab jobs submit`)
  openai_jobs.py  OpenAI's job fields -> a run config; rows -> OpenAI's objects
  files.py        /v1/files (uploads checked by the data toolkit); jobs.py: /v1/fine_tuning/jobs
  results.py      a finished job's result files (step metrics, base vs fine-tuned)
  service.py      the running parts in one object; app.py assembles the server (tunelab.api.create_app + routers)
  ui.py, runs.py  the web UI's pages and JSON; static/ ships every script and style (uPlot, MIT, vendored)
  review.py       HOOK: the feedback loop's review queue, shown when its router exists

It drives tunelab.api (train, load_config, compare, create_app), so it sits above api beside quickstart.
"""
