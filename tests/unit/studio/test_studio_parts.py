"""The studio's pieces without a server: OpenAI fields -> run config, progress and ETA from metrics.jsonl, the
config diff, the form's errors, and the `tunelab jobs` verbs on the queue's database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from studiokit import WORDS, chat_rows, write_jsonl

from tunelab.cli import main
from tunelab.config import ModelConfig
from tunelab.errors import ConfigError
from tunelab.studio import openai_jobs as oj
from tunelab.studio import runs
from tunelab.studio.store import JobStore
from tunelab.studio.submit import check_text


def _req(**fields: object) -> oj.JobRequest:
    return oj.JobRequest.model_validate({"model": "base", "training_file": "file-1", **fields})


def test_openai_fields_become_the_run_config() -> None:
    base = ModelConfig(name_or_path="tiny")
    req = _req(seed=3, suffix="x", method={"type": "dpo", "dpo": {"hyperparameters": {
        "beta": 0.3, "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.5}}})  # fmt: skip
    defaults = {"train": {"lr": 1e-3, "max_steps": 9}, "tuning": {"lora": {"r": 4}}}
    cfg = oj.build_config(
        req, base, defaults, ("t.jsonl", "preference"), ("v.jsonl", "preference"), "/runs", "ftjob-ab"
    )
    assert cfg.method.name == "dpo" and cfg.method.dpo.beta == 0.3
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.seed) == (2, 2, 5e-4, 3)
    assert cfg.train.max_steps == 9 and cfg.train.save_every == 10  # the operator's defaults over the built-in ones
    assert cfg.tuning.mode == "lora" and cfg.tuning.lora.r == 4 and cfg.tuning.lora.alpha == 32
    assert [d.path for d in cfg.data.train] == ["t.jsonl"] and [d.format for d in cfg.data.eval] == ["preference"]
    assert (cfg.output.dir, cfg.output.name, cfg.model.name_or_path) == ("/runs", "ftjob-ab", "tiny")
    shown = oj.resolved(req, cfg)
    assert shown["method"]["dpo"]["hyperparameters"] == {"batch_size": 2, "learning_rate_multiplier": 0.5,
                                                         "n_epochs": 2, "beta": 0.3}  # fmt: skip

    auto = oj.build_config(_req(hyperparameters={"n_epochs": "auto", "batch_size": "auto"}), base, {},
                           ("t.jsonl", "messages"), None, "/runs", "ftjob-cd")  # fmt: skip
    assert auto.method.name == "sft" and auto.train.epochs == 3 and auto.train.lr == 2e-4 and not auto.data.eval
    with pytest.raises(ConfigError, match="tuning.mode 'full': OpenAI-style jobs train an adapter"):
        oj.build_config(_req(), base, {"tuning": {"mode": "full"}}, ("t.jsonl", "messages"), None, "/r", "j")
    with pytest.raises(ConfigError, match="not a valid run config"):
        oj.build_config(_req(), base, {"train": {"lrr": 1}}, ("t.jsonl", "messages"), None, "/r", "j")
    assert oj.fine_tuned_name("qwen2.5", None, "ftjob-0123456789ab") == "ft:qwen2_5::01234567"
    assert oj.refusals(_req(suffix="ok_name-1")) is None
    assert oj.refusals(_req(metadata={str(i): "v" for i in range(17)}))[0] == "metadata"  # type: ignore[index]


def test_progress_eta_and_curves_come_from_the_files_own_times() -> None:
    recs = [{"step": s, "loss": 2.0 / s, "lr": 0.1, "tokens_per_s": 100.0, "time": 1000.0 + 2 * s, "total_steps": 10}
            for s in range(1, 5)]  # fmt: skip
    recs.append({"step": 4, "eval_loss": 1.5, "time": 1009.0, "total_steps": 10})
    p = runs.progress(recs)
    assert (p["step"], p["total_steps"], p["tokens_per_s"]) == (4, 10, 100.0)
    assert p["eta_s"] == pytest.approx(6 * 2.0)  # 2 s a step, 6 steps to go
    paused = [*recs[:4], {"step": 5, "loss": 0.4, "time": 5000.0, "total_steps": 10},  # a stop and a resume
              {"step": 6, "loss": 0.3, "time": 5002.0, "total_steps": 10}]  # fmt: skip
    assert runs.progress(paused)["eta_s"] == pytest.approx(4 * 2.0)  # the pause is not the pace
    assert runs.progress([])["eta_s"] is None
    c = runs.curves(recs)
    assert c["loss"][0] == [1, 2.0] and c["eval_loss"] == [[4, 1.5]] and "grad_norm" not in c


def test_config_diff_and_flipped_order() -> None:
    diff = runs.config_diff({"a": {"train": {"lr": 1, "epochs": 2}, "model": {"name_or_path": "tiny"}},
                             "b": {"train": {"lr": 2, "epochs": 2}, "model": {"name_or_path": "tiny"}, "x": [1]}})  # fmt: skip
    assert diff == [{"key": "train.lr", "values": [1, 2]}, {"key": "x", "values": [None, [1]]}]
    flips = [
        {"direction": "improved", "key": "loss", "index": 0},
        {"direction": "regressed", "key": "loss", "index": 3},
    ]
    assert [f["index"] for f in runs.flipped_regressions_first(flips)] == [3, 0]


def test_the_form_reports_tunelabs_own_errors_by_line() -> None:
    with pytest.raises(ConfigError) as e:
        check_text("model:\n  name_or_path: tiny\ntrain:\n  epochz: 3\n")
    assert "config.yaml:4: unknown key 'train.epochz' (did you mean 'epochs'?)" in str(e.value)
    assert "tunelab-form-" not in str(e.value)
    with pytest.raises(ConfigError, match=r"(?s)config.yaml: not valid YAML: .*line 4"):
        check_text("train:\n  train:\n  x: [\n")
    assert check_text("method:\n  name: dpo\n").method.name == "dpo"


def cli(*args: str) -> int:
    """The real `tunelab` verbs in-process; the exit status."""
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_jobs_verbs_share_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(WORDS[:4]))
    (tmp_path / "run.yaml").write_text(f"model: {{name_or_path: tiny}}\ndata:\n  train: [{{path: {data}}}]\n")
    assert cli("jobs", "submit", "run.yaml", "train.max_steps=3", "output.name=cli-run") == 0
    out = capsys.readouterr().out
    job_id = out.split()[1].rstrip(":")
    assert out.startswith("queued job-") and str(tmp_path / "runs" / "cli-run") in out
    store = JobStore(f"sqlite:///{tmp_path / 'studio' / 'studio.db'}")  # the default place, as the studio reads it
    row = store.job(job_id)
    assert row is not None and row["status"] == "queued" and "max_steps: 3" in row["config_yaml"]
    assert cli("jobs", "list") == 0
    assert job_id in capsys.readouterr().out
    assert cli("jobs", "cancel", job_id) == 0
    assert f"cancelled {job_id} (was queued)" in capsys.readouterr().out
    assert cli("jobs", "show", job_id) == 0
    shown = capsys.readouterr().out
    assert "cancelled" in shown and "Job cancelled from the command line" in shown
    assert cli("jobs", "cancel", job_id) == 2 and "already cancelled" in capsys.readouterr().err
    assert cli("jobs", "submit", "run.yaml", "output.name=cli-run", "train.lrr=1") == 2
    assert "unknown key 'train.lrr'" in capsys.readouterr().err
    assert json.loads(json.dumps(store.list_jobs())) and len(store.list_jobs()) == 1
