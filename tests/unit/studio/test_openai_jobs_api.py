"""OpenAI's fine-tuning API on the studio server, driven by the real `openai` client: upload, create, poll to
succeeded, events in order, checkpoints, result files, then the fine-tuned model answers on the same server;
cancel on a running job; a service restart mid-job resumes it from its checkpoint; refusals name the field."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import psutil
import pytest
from studiokit import WORDS, chat_rows, job_defaults, running_studio, studio_config, wait_for, write_jsonl

from tunelab import api
from tunelab.train.rundir import read_metrics

ACTIVE = ("validating_files", "queued", "running")
PROMPT = [{"role": "user", "content": "Say red."}]


def _upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def _data(tmp: Path) -> tuple[Path, Path]:
    return (write_jsonl(tmp / "train.jsonl", chat_rows(WORDS[:8])),
            write_jsonl(tmp / "valid.jsonl", chat_rows(WORDS[8:], verb="Repeat")))  # fmt: skip


def _answer(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=6, temperature=0)
    assert r.model == model
    return r.choices[0].message.content or ""


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_openai_client_upload_create_poll_events_and_the_fine_tuned_model_answers(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    train, valid = _data(tmp_path)
    url = request.getfixturevalue("pg_url") if db == "postgresql" else None  # the workers write their events there too
    with running_studio(tmp_path, studio_config(tmp_path, url=url)) as s:
        c = s.client
        train_id, valid_id = _upload(c, train), _upload(c, valid)
        assert c.files.retrieve(train_id).purpose == "fine-tune"
        job = c.fine_tuning.jobs.create(model="base", training_file=train_id, validation_file=valid_id,
                                        suffix="words", seed=7, method={"type": "supervised", "supervised": {
                                            "hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 2}}})  # fmt: skip
        assert job.status == "queued" and job.fine_tuned_model is None and job.seed == 7
        assert job.hyperparameters.batch_size == 4 and job.hyperparameters.learning_rate_multiplier == 2
        job = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status not in ACTIVE and j, why="the job")
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:base:words:{job.id.split('-')[1][:8]}"
        assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at >= job.created_at  # type: ignore[operator]
        assert [j.id for j in c.fine_tuning.jobs.list().data] == [job.id]

        events = c.fine_tuning.jobs.list_events(job.id, limit=100).data  # newest first, as OpenAI returns them
        ordered = list(reversed(events))
        ids = [int(e.id.split("-")[1]) for e in ordered]
        assert ids == sorted(ids) and [e.created_at for e in ordered] == sorted(e.created_at for e in ordered)
        messages = [e.message for e in ordered]
        assert (
            messages[0] == f"Created fine-tuning job: {job.id}" and messages[-1] == "The job has successfully completed"
        )
        steps = [e.data["step"] for e in ordered if e.type == "metrics" and "train_loss" in e.data]  # type: ignore[index,operator]
        assert steps == [1, 2, 3, 4]
        assert any(m == f"New fine-tuned model created: {job.fine_tuned_model}" for m in messages)
        verdict = [m for m in messages if m.startswith("Base vs fine-tuned on the validation file: loss ")]
        assert verdict and "95% CI" in verdict[0]
        page = c.fine_tuning.jobs.list_events(job.id, limit=2)
        older = c.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
        assert page.has_more and [e.id for e in older.data] == [e.id for e in events[2:4]]

        ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [k.step_number for k in ckpts] == [4, 2] and all(k.metrics.train_loss for k in ckpts)

        names = {c.files.retrieve(f).filename: f for f in job.result_files}
        assert set(names) == {"step_metrics.csv", "base_vs_fine_tuned.json"}
        csv = c.files.content(names["step_metrics.csv"]).text.splitlines()
        assert csv[0].startswith("step,train_loss,valid_loss") and len(csv) == 5
        comparison = json.loads(c.files.content(names["base_vs_fine_tuned.json"]).text)["comparison"]
        row = comparison["rows"][0]
        assert row["key"] == "loss" and row["ci_low"] <= row["diff"] <= row["ci_high"]

        assert job.fine_tuned_model in [m.id for m in c.models.list().data]
        answer = _answer(c, job.fine_tuned_model)  # type: ignore[arg-type]
        trained = api.generate(str(tmp_path / "runs" / job.id), messages=PROMPT, max_new_tokens=6)
        assert answer == trained != _answer(c, "base")  # the trained adapter answers, not the base


def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    train, _ = _data(tmp_path)
    cfg = studio_config(tmp_path, defaults=job_defaults(max_steps=100_000, save_every=1000))
    with running_studio(tmp_path, cfg) as s:
        c = s.client
        job = c.fine_tuning.jobs.create(model="tiny", training_file=_upload(c, train))
        wait_for(lambda: any(e.type == "metrics" for e in c.fine_tuning.jobs.list_events(job.id).data), why="a step")
        pid = s.studio.store.job(job.id)["pid"]  # type: ignore[index]
        cancelled = c.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 60, why="the worker to end")  # fmt: skip
        wait_for(lambda: any(e.message == "The training process was stopped"
                             for e in c.fine_tuning.jobs.list_events(job.id).data), 30)  # fmt: skip
        final = c.fine_tuning.jobs.retrieve(job.id)
        assert final.status == "cancelled" and final.fine_tuned_model is None
        assert not (tmp_path / "runs" / job.id / "final").exists()
        with pytest.raises(openai.BadRequestError, match="already cancelled"):
            c.fine_tuning.jobs.cancel(job.id)


def test_a_service_restart_mid_job_resumes_it_from_its_checkpoint(tmp_path: Path) -> None:
    train, valid = _data(tmp_path)
    cfg = studio_config(tmp_path, defaults=job_defaults(max_steps=60, save_every=3))
    with running_studio(tmp_path, cfg) as s:
        c = s.client
        job = c.fine_tuning.jobs.create(model="base", training_file=_upload(c, train),
                                        validation_file=_upload(c, valid))  # fmt: skip
        wait_for(lambda: s.studio.store.checkpoints(job.id), why="a checkpoint")
    # the service is down; its shutdown asked the worker to save a checkpoint, and queued the job to resume
    stopped = s.studio.store.job(job.id)
    assert stopped is not None and stopped["status"] == "queued" and stopped["resume"], stopped
    paused_at = max(k["step"] for k in s.studio.store.checkpoints(job.id))
    assert 0 < paused_at < 60

    with running_studio(tmp_path, cfg) as s2:
        c = s2.client
        done = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status not in ACTIVE and j, why="resume")
        assert done.status == "succeeded", done.error
        messages = [e.message for e in reversed(c.fine_tuning.jobs.list_events(job.id, limit=1000).data)]
        assert any(m.startswith("The service stopped while this job ran") for m in messages)
        resumed = [m for m in messages if m.startswith("Resumed from the checkpoint at step ")]
        assert resumed == [f"Resumed from the checkpoint at step {paused_at} of 60"], messages
        assert [m for m in messages if m.startswith("Training started")] == ["Training started: 60 steps"]
        steps = [r["step"] for r in read_metrics(tmp_path / "runs" / job.id) if "loss" in r]
        assert steps == list(range(1, 61))  # every step once: the replayed ones were not logged twice
        trained = api.generate(str(tmp_path / "runs" / job.id), messages=PROMPT, max_new_tokens=6)
        assert _answer(c, done.fine_tuned_model) == trained  # type: ignore[arg-type]


def test_uploads_are_checked_by_the_data_toolkit_and_refusals_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows(["red"])[0]) + "\n{not json\n" +
                   json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")  # fmt: skip
    pref = write_jsonl(tmp_path / "pref.jsonl", [{"input": {"messages": [{"role": "user", "content": "hi"}]},
                                                  "preferred_output": [{"role": "assistant", "content": "hello"}],
                                                  "non_preferred_output": [{"role": "assistant", "content": "go"}]}])  # fmt: skip
    train, _ = _data(tmp_path)
    with running_studio(tmp_path, studio_config(tmp_path, max_running=0)) as s:  # queues, trains nothing
        c = s.client
        with pytest.raises(openai.BadRequestError) as e:
            _upload(c, bad)
        text = str(e.value)
        assert "bad.jsonl failed the data check with 2 error(s)" in text
        assert "bad.jsonl, line 2: invalid JSON" in text and "bad.jsonl, line 3" in text and "no assistant turn" in text
        assert str(tmp_path) not in text  # the server's folders are not shown
        assert c.files.list().data == []  # nothing kept

        train_id, pref_id = _upload(c, train), _upload(c, pref)
        cases = [
            ({"model": "gpt-4o-mini", "training_file": train_id}, "model", "fine-tunes the model it serves"),
            ({"model": "base", "training_file": "file-nope"}, "training_file", "no file 'file-nope'"),
            ({"model": "base", "training_file": pref_id}, "training_file", "method supervised trains on messages"),
            ({"model": "base", "training_file": train_id, "method": {"type": "dpo"}}, "training_file", "preference"),
            ({"model": "base", "training_file": train_id, "method": {"type": "reinforcement"}}, "method.type",
             "reinforcement: not supported"),
            ({"model": "base", "training_file": train_id, "integrations": [{"type": "wandb", "wandb": {"project": "p"}}]},
             "integrations", "not supported"),
            ({"model": "base", "training_file": train_id, "suffix": "a b"}, "suffix", "letters, digits"),
        ]  # fmt: skip
        for body, param, words in cases:
            with pytest.raises(openai.BadRequestError) as e:
                c.fine_tuning.jobs.create(**body)  # type: ignore[arg-type]
            assert e.value.body["param"] == param and words in e.value.body["message"], (body, e.value.body)  # type: ignore[index]
        dpo = c.fine_tuning.jobs.create(model="base", training_file=pref_id, method={
            "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}})  # fmt: skip
        assert dpo.method.type == "dpo" and dpo.method.dpo.hyperparameters.beta == 0.2  # type: ignore[union-attr]
        assert dpo.hyperparameters.n_epochs == 2
        time.sleep(3 * s.studio.cfg.jobs.poll_s)  # several queue polls: with max_running 0 none claims it
        assert c.fine_tuning.jobs.retrieve(dpo.id).status == "queued"
        c.fine_tuning.jobs.cancel(dpo.id)

        # keys: alice sees her own jobs and files; another key's job is not found for her
        admin_job = s.admin.fine_tuning.jobs.create(model="base", training_file=_upload(s.admin, train))
        s.admin.fine_tuning.jobs.cancel(admin_job.id)
        with pytest.raises(openai.NotFoundError):
            c.fine_tuning.jobs.retrieve(admin_job.id)
        assert {j.id for j in s.admin.fine_tuning.jobs.list().data} == {dpo.id, admin_job.id}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).fine_tuning.jobs.list()
