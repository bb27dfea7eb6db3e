"""Experiment trackers on tiny runs, offline: what each one holds is read back from its own files or store."""

from __future__ import annotations

import importlib.util
import json
import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.train.conftest import write_alpaca

from tunelab.api import Hooks, TrainingInterrupted, train
from tunelab.errors import TunelabError
from tunelab.train.rundir import read_metrics

pytest.importorskip("tensorboard", reason="tensorboard is a test dependency: pip install -e '.[dev]'")
pytest.importorskip("mlflow", reason="mlflow-skinny is a test dependency: pip install -e '.[dev]'")
pytest.importorskip("wandb", reason="wandb is a test dependency: pip install -e '.[dev]'")

NO_EVAL = ("eval.baseline=false", "eval.forgetting.enabled=false")


@pytest.fixture
def tracked_cfg(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A 3-step tiny run with an eval set, so the run ends with a base-vs-fine-tuned comparison."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    # mlflow's file store is opted into by the run (os.environ); set-then-delete makes the teardown remove it
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    ev = write_alpaca(tmp_path / "eval.jsonl", n=8, seed=1)

    def make(*overrides: str):  # noqa: ANN202
        return make_cfg("train.max_steps=3", f"data.eval=[{{path: {ev}, format: alpaca}}]",
                        "eval.bootstrap_resamples=200", *overrides)  # fmt: skip

    return make


def losses(run: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(run) if "loss" in m]


def comparison_row(run: Path) -> dict[str, Any]:
    rows = json.loads((run / "eval" / "comparison.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["loss"]
    return rows[0]


# ----------------------------------------------------------------------------------------- tensorboard


def test_tensorboard_event_files_hold_loss_config_and_comparison(tracked_cfg) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    run = train(tracked_cfg("train.trackers=[tensorboard]", "output.name=tb", "train.tracking.tags={team: nlp}"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    expected = losses(run)
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in got] == [s for s, _ in expected] == [1, 2, 3]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)  # stored as float32
    evals = [m for m in read_metrics(run) if "eval_loss" in m]
    assert [(e.step, e.value) for e in events.Scalars("eval_loss")] == [(3, pytest.approx(evals[-1]["eval_loss"]))]
    row = comparison_row(run)
    assert events.Scalars("compare/loss/diff")[-1].value == pytest.approx(row["diff"], rel=1e-5)
    text = make_ndarray(events.Tensors("comparison/text_summary")[-1].tensor_proto).item().decode()
    assert f"| loss | {row['value_a']:.4g} | {row['value_b']:.4g} |" in text and row["verdict"] in text
    assert "team: nlp" in make_ndarray(events.Tensors("tags/text_summary")[-1].tensor_proto).item().decode()
    (hparams,) = (run / "tensorboard").glob("*/hparams.yml")  # accelerate's copy of the hparams
    assert yaml.safe_load(hparams.read_text())["train.lr"] == 0.01


# ----------------------------------------------------------------------------------------- mlflow


def mlflow_run(uri: str, experiment: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def metric_history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_mlflow_file_store_run_is_named_tagged_with_metrics_and_artifacts(tracked_cfg, tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    cfg = tracked_cfg("train.trackers=[mlflow]", f"train.tracking.uri={store}", "train.tracking.run_name=first try",
                      "train.tracking.tags={team: nlp, data: v3}", "output.name=ml")  # fmt: skip
    run = train(cfg, config_path=tmp_path / "support-bot.yaml")
    client, mrun = mlflow_run(str(store), "support-bot")  # the project defaults to the config file's stem
    assert mrun.info.run_name == "first try" and mrun.info.status == "FINISHED"
    assert mrun.data.tags["team"] == "nlp" and mrun.data.tags["data"] == "v3"
    assert mrun.data.tags["tunelab.run_dir"] == str(run.resolve())
    assert mrun.data.params["train.lr"] == "0.01" and mrun.data.params["tuning.mode"] == "lora"
    assert metric_history(client, mrun.info.run_id, "loss") == losses(run)
    row = comparison_row(run)
    assert mrun.data.metrics["compare/loss/diff"] == pytest.approx(row["diff"])
    assert mrun.data.metrics["compare/loss/significant"] == float(row["significant"])
    forgetting = json.loads((run / "eval" / "forgetting.json").read_text())
    assert mrun.data.metrics["forgetting/after"] == pytest.approx(forgetting["after"])
    top = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"report.md", "report.html", "config.yaml", "eval"} <= top
    in_eval = {a.path for a in client.list_artifacts(mrun.info.run_id, "eval")}
    assert {"eval/comparison.json", "eval/final.json", "eval/forgetting.json"} <= in_eval
    got = client.download_artifacts(mrun.info.run_id, "report.md", str(tmp_path / "dl"))
    assert Path(got).read_text() == (run / "report.md").read_text()
    assert json.loads((run / "tracking.json").read_text())["mlflow"] == mrun.info.run_id


def test_mlflow_default_sqlite_store_keeps_a_projects_runs_in_one_experiment(tracked_cfg, tmp_path: Path) -> None:
    first = train(tracked_cfg("train.trackers=[mlflow]", "train.tracking.project=bot", "output.name=a"))
    second = train(tracked_cfg("train.trackers=[mlflow]", "train.tracking.project=bot", "output.name=b",
                               "train.max_steps=1", *NO_EVAL))  # fmt: skip
    db = tmp_path / "runs" / "mlflow.db"
    assert db.is_file()  # beside the run folders, not ./mlflow.db of the current folder
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("bot")
    by_name = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(by_name) == {"a", "b"}  # the run names default to output.name
    assert metric_history(client, by_name["a"].info.run_id, "loss") == losses(first)
    assert metric_history(client, by_name["b"].info.run_id, "loss") == losses(second)
    assert Path(exp.artifact_location) == tmp_path / "runs" / "mlartifacts"
    assert {a.path for a in client.list_artifacts(by_name["a"].info.run_id)} >= {"report.md", "eval"}


def test_ctrl_c_ends_the_mlflow_run_as_killed_and_resume_continues_it(tracked_cfg, tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    cfg = tracked_cfg("train.trackers=[mlflow]", f"train.tracking.uri={store}", "output.name=ctrlc", *NO_EVAL)

    def ctrl_c(step: int) -> None:
        if step == 1:
            signal.raise_signal(signal.SIGINT)  # the loop's own handler: checkpoint, then TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(cfg, hooks=Hooks(on_step_end=ctrl_c))
    client, mrun = mlflow_run(str(store), "tunelab")
    assert mrun.info.status == "KILLED" and metric_history(client, mrun.info.run_id, "loss")[0][0] == 1
    run = train(cfg, resume=True)
    client, resumed = mlflow_run(str(store), "tunelab")  # still one run in the experiment
    assert resumed.info.run_id == mrun.info.run_id and resumed.info.status == "FINISHED"
    assert [s for s, _ in metric_history(client, mrun.info.run_id, "loss")] == [1, 2, 3]
    assert [s for s, _ in losses(run)] == [1, 2, 3]


# ----------------------------------------------------------------------------------------- wandb


def wandb_records(run: Path) -> Iterator[Any]:
    """The records of an offline run's run-<id>.wandb file (LevelDB log format: 32 KiB blocks of
    checksum/length/type-framed chunks) as wandb's own protobuf Records."""
    import wandb
    from wandb.proto import wandb_internal_pb2

    wandb.teardown()  # run.finish() may return before wandb's service has written the file; this waits for it
    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    pos, chunk, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_project_name_config_history_summary_and_files(tracked_cfg) -> None:
    run = train(tracked_cfg("train.trackers=[wandb]", "train.tracking.project=bot", "output.name=wb",
                            "train.tracking.tags={team: nlp}"))  # fmt: skip
    records = list(wandb_records(run))
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.project, info.display_name, list(info.tags)) == ("bot", "wb", ["team:nlp"])
    config = {_key(i): json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update}
    assert config["train"]["lr"] == 0.01 and config["tunelab_run_dir"] == str(run.resolve())
    history: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.HasField("history"):
            row = {_key(i): json.loads(i.value_json) for i in r.history.item}
            history[row["_step"]] = row
    assert [(s, history[s]["loss"]) for s in sorted(history)] == losses(run)
    summary = {_key(i): json.loads(i.value_json) for r in records if r.HasField("summary") for i in r.summary.update}
    assert summary["compare/loss/diff"] == pytest.approx(comparison_row(run)["diff"])
    saved = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert {"report.md", "report.html", "eval/comparison.json"} <= saved
    (files,) = (run / "wandb").glob("offline-run-*/files")
    assert (files / "report.md").read_text() == (run / "report.md").read_text()
    assert json.loads((run / "tracking.json").read_text())["wandb"] == info.run_id


# ----------------------------------------------------------------------------------------- all of them


def test_a_run_that_raises_ends_every_tracker_as_failed(tracked_cfg, tmp_path: Path) -> None:
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "mlruns"
    cfg = tracked_cfg("train.trackers=[tensorboard, mlflow, wandb]", f"train.tracking.uri={store}",
                      "output.name=boom", *NO_EVAL)  # fmt: skip

    def boom(step: int) -> None:
        if step == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train(cfg, hooks=Hooks(on_step_end=boom))
    run = Path(cfg.output.dir) / "boom"
    client, mrun = mlflow_run(str(store), "tunelab")
    assert mrun.info.status == "FAILED" and mlflow.active_run() is None  # a next run in this process can start
    assert [s for s, _ in metric_history(client, mrun.info.run_id, "loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(mrun.info.run_id)} == {"config.yaml"}  # what the run left
    (exit_record,) = [r.exit for r in wandb_records(run) if r.HasField("exit")]
    assert exit_record.exit_code == 1
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_a_tracker_that_is_not_installed_is_refused_before_training(make_cfg, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = make_cfg("train.trackers=[tensorboard, wandb]", "output.name=missing")
    with pytest.raises(TunelabError, match=r"wandb is not installed; pip install 'tunelab\[trackers\]'"):
        train(cfg)
    assert not (Path(cfg.output.dir) / "missing").exists()
