"""The Optuna study behind `tunelab tune`: storage, sampler, pruner, the budget, workers and resume.

The study lives in an Optuna storage (default: a SQLite file in the study folder), so a second `tunelab tune` of the
same config resumes it, `tune.workers` processes on this machine share it, and machines given the same PostgreSQL
URL join it (`tunelab tune CONFIG --worker`). The budget (tune.trials) counts finished trials of the whole study,
so it holds over every process (a process starting its last trial while another finishes one may overshoot by
one trial per extra worker).

Resume: a trial of this host whose process is gone (killed, the machine rebooted) is marked failed and its
parameters are enqueued again; so is a trial stopped by Ctrl-C or SIGTERM (tunelab's training loop saves a
checkpoint and raises TrainingInterrupted; the trial is retried from the start in a fresh run folder). A trial on
another machine that stops sending heartbeats (tune.heartbeat) is failed and retried the same way by Optuna.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tunelab.config import RunConfig, TuneConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.tune import space
from tunelab.tune.trial import Objective, label, read_label

FINISHED = ("COMPLETE", "PRUNED")


def optuna_module() -> Any:
    """optuna, or a clear error when the `tune` extra is not installed."""
    try:
        import optuna
    except ImportError:
        raise TunelabError("tunelab tune needs optuna: pip install 'tunelab[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclass
class Study:
    """Where a search lives: its name, its folder (trial runs, reports) and its Optuna storage URL."""

    name: str
    root: Path
    storage: str

    @classmethod
    def of(cls, cfg: RunConfig, config_path: str | Path | None) -> Study:
        tune = _tune(cfg)
        name = tune.study or cfg.output.name or (Path(config_path).stem if config_path else "tune")
        root = Path(cfg.output.dir) / name
        url = tune.storage or str(root / "study.db")
        if "://" not in url:
            url = f"sqlite:///{Path(url).resolve()}"
        return cls(name, root, url)


def _tune(cfg: RunConfig) -> TuneConfig:
    if cfg.tune is None:
        raise TunelabError("tunelab tune: the config has no tune: section (see docs/tuning.md)")
    return cfg.tune


def storage(tune: TuneConfig, url: str) -> Any:
    optuna = optuna_module()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 300}}  # workers wait for the file lock, not fail
    if tune.heartbeat:
        kwargs |= {"heartbeat_interval": tune.heartbeat, "grace_period": 3 * tune.heartbeat} | _retry_stale(optuna)
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # a bad URL, a missing driver, an unreachable server
        raise TunelabError(f"tune.storage: cannot open {url}: {type(e).__name__}: {e}") from None


def _retry_stale(optuna: Any) -> dict[str, Any]:
    """Optuna's callback that enqueues a stale trial's parameters again (renamed in Optuna 4.9)."""
    st = optuna.storages
    if hasattr(st, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": st.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    return {"failed_trial_callback": st.RetryFailedTrialCallback(max_retry=1)}


def sampler(tune: TuneConfig) -> Any:
    optuna = optuna_module()
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(tune.space), seed=tune.seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=tune.seed)
    return optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=tune.startup_trials, multivariate=True,
                                      group=True, constant_liar=True)  # fmt: skip


def pruner(cfg: RunConfig) -> Any:
    optuna = optuna_module()
    p = _tune(cfg).pruner
    first = p.min_resource or cfg.train.eval_every or 1
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
    if p.kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=p.reduction_factor)
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=cfg.train.max_steps or "auto",
                                              reduction_factor=p.reduction_factor)  # fmt: skip
    return optuna.pruners.NopPruner()


def open_study(cfg: RunConfig, where: Study) -> Any:
    optuna = optuna_module()
    tune = _tune(cfg)
    try:
        return optuna.create_study(
            storage=storage(tune, where.storage), sampler=sampler(tune), pruner=pruner(cfg), study_name=where.name,
            directions=[o.resolved_direction() for o in tune.objectives], load_if_exists=True,
        )  # fmt: skip
    except ValueError as e:  # e.g. the stored study has other directions
        raise TunelabError(f"tune: study {where.name!r} in {where.storage}: {e}") from None


# --------------------------------------------------------------------------- budget and resume


def trials_in(study: Any, *states: str) -> list[Any]:
    optuna = optuna_module()
    return study.get_trials(deepcopy=False, states=tuple(optuna.trial.TrialState[s] for s in states))


def budget_spent(study: Any, tune: TuneConfig) -> bool:
    if tune.sampler == "grid" and grid_done(study, tune):
        return True
    if tune.trials is None:
        return False
    failed = [t for t in trials_in(study, "FAIL") if not t.user_attrs.get("interrupted")]
    return len(trials_in(study, *FINISHED)) >= tune.trials or len(failed) >= tune.trials


def grid_done(study: Any, tune: TuneConfig) -> bool:
    """Every point of this grid has a finished trial and no retry waits. Optuna's GridSampler, asked for a trial
    then, runs a point again, so running a finished grid study again would repeat a trial."""
    if trials_in(study, "WAITING"):
        return False
    grid = space.grid(tune.space)
    seen = {t.system_attrs.get("grid_id") for t in trials_in(study, "COMPLETE", "PRUNED", "FAIL")
            if t.system_attrs.get("search_space") == grid}  # fmt: skip
    return seen >= set(range(space.grid_size(tune.space)))


def recover(study: Any, log: Any = print) -> list[int]:
    """Fail this host's trials whose process is gone, and enqueue again those and the interrupted ones (once).
    Returns the trial numbers retried."""
    optuna = optuna_module()
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    out = []
    for t in trials_in(study, "RUNNING"):
        if _orphan(t):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            _relabel(t, "failed: its process ended without finishing the trial")
            if t.number not in retried:
                out.append(_retry(study, t))
    for t in trials_in(study, "FAIL"):
        if t.user_attrs.get("interrupted") and t.number not in retried:
            out.append(_retry(study, t))
    if out:
        log(
            f"tune: resuming {study.study_name}: trial(s) {', '.join(map(str, out))} did not finish; running them again"
        )
    return out


def _orphan(t: Any) -> bool:
    if t.user_attrs.get("host") != socket.gethostname():
        return False  # another machine's trial: its heartbeat tells
    pid = int(t.user_attrs.get("pid", -1))
    if pid == os.getpid():
        return False
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, ValueError):
        return True
    return started > t.datetime_start.timestamp() + 1  # the pid was reused by a later process


def _retry(study: Any, t: Any) -> int:
    study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
    return int(t.number)


def _relabel(t: Any, state: str) -> None:
    run_dir = t.user_attrs.get("run_dir")
    if run_dir and Path(run_dir).is_dir():
        label(Path(run_dir), {**read_label(Path(run_dir)), "state": state})


# --------------------------------------------------------------------------- running trials


def trial_base(cfg: RunConfig) -> dict[str, Any]:
    """Every trial's starting config: the config without tune, threads shared among this machine's workers."""
    raw = space.base_raw(cfg)
    workers = _tune(cfg).workers
    if workers > 1 and cfg.train.threads is None:
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        raw["train"]["threads"] = max(1, cores // workers)
    return raw


def optimize(cfg: RunConfig, where: Study, worker: bool = False, log: Any = print) -> Any:
    """Run trials until the budget (trials, timeout) is spent; with tune.workers > 1 (and not itself a worker)
    also start that many - 1 worker processes on the same study. Returns the study."""
    tune = _tune(cfg)
    study = open_study(cfg, where)
    where.root.mkdir(parents=True, exist_ok=True)
    if not worker:
        recover(study, log)
    procs = [] if worker else _start_workers(cfg, where, tune.workers - 1)
    objective = Objective(cfg, where.name, trial_base(cfg), log)
    try:
        if not budget_spent(study, tune):
            stop = _Budget(tune)
            study.optimize(objective, timeout=tune.timeout, catch=(TunelabError,), callbacks=[stop, objective.done],
                           gc_after_trial=True)  # fmt: skip
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.wait()
    failed = [str(where.root / f"worker-{i}.log") for i, p in enumerate(procs, 1) if p.returncode != 0]
    if failed:
        log(f"tune: {len(failed)} worker(s) exited with an error; their logs: {', '.join(failed)}")
    return study


class _Budget:
    def __init__(self, tune: TuneConfig) -> None:
        self.tune = tune

    def __call__(self, study: Any, trial: Any) -> None:
        if budget_spent(study, self.tune):
            study.stop()


def _start_workers(cfg: RunConfig, where: Study, n: int) -> list[subprocess.Popen[bytes]]:
    """n processes running `tunelab tune STUDY/tune.yaml --worker`, each with its own sampler seed and log."""
    if n <= 0:
        return []
    tune = _tune(cfg)
    path = where.root / "tune.yaml"
    fixed = cfg.model_copy(update={"tune": tune.model_copy(update={"study": where.name, "storage": where.storage})})
    path.write_text(dump_config(fixed))
    procs = []
    for i in range(1, n + 1):
        logfile = where.root / f"worker-{i}.log"
        cmd = [sys.executable, "-m", "tunelab", "tune", str(path), f"tune.seed={tune.seed + 1000 * i}", "--worker"]
        with logfile.open("w") as out:  # the child keeps its own handle
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, PYTHONUNBUFFERED="1")))  # fmt: skip
        time.sleep(0.5)  # stagger the first storage writes
    return procs
