"""`stages:` config: overrides merge over the top level, paths resolve relative to the file, and a bad
stage is reported at load time with its index and name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import load_config, stage_config
from tunelab.errors import ConfigError
from tunelab.methods import check_run

CFG = """
model: {name_or_path: tiny}
train: {batch_size: 4, lr: 1.0e-3}
output: {name: two}
stages:
  - name: sft
    data: {train: [{path: sft.jsonl}]}
  - name: dpo
    method: {name: dpo, dpo: {beta: 0.2}}
    data: {train: [{path: pairs.jsonl, format: preference}]}
    train: {lr: 5.0e-4}
"""


def test_stage_configs_merge_and_resolve(tmp_path: Path) -> None:
    (tmp_path / "sft.jsonl").write_text("{}\n")
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    (tmp_path / "c.yaml").write_text(CFG)
    cfg = load_config(tmp_path / "c.yaml")
    first, second = stage_config(cfg, 0), stage_config(cfg, 1, "/models/sft-merged")
    assert first.method.name == "sft" and first.output.name == "two/1-sft" and first.stages == []
    assert first.data.train[0].path == str(tmp_path / "sft.jsonl")
    assert (second.method.name, second.method.dpo.beta, second.train.lr, second.train.batch_size) == (
        "dpo",
        0.2,
        5e-4,
        4,
    )
    assert second.model.name_or_path == "/models/sft-merged" and second.output.name == "two/2-dpo"


def test_bad_stage_fails_at_load_naming_it(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CFG.replace("beta: 0.2}", "beta: 0.2}, bta: 1"))
    with pytest.raises(ConfigError, match=r"(?s)stages\[1\] \(dpo\).*bta"):
        load_config(tmp_path / "c.yaml")


def test_stage_reward_paths_resolve_and_an_eval_ppl_gate_needs_sft(tmp_path: Path) -> None:
    (tmp_path / "r.py").write_text("def reward(prompt, completion):\n    return 1.0\n")
    rl = "  - name: rl\n    method: {name: grpo, grpo: {rewards: [{function: r.py, weight: 2}, {function: parity}]}}\n"
    (tmp_path / "c.yaml").write_text(CFG + "    eval: {metrics: [reward], rewards: [{function: r.py}]}\n" + rl)
    cfg = load_config(tmp_path / "c.yaml")  # a stage's reward files are relative to the config file too
    assert [r.function for r in stage_config(cfg, 1).eval.rewards] == [str(tmp_path / "r.py")]
    rewards = stage_config(cfg, 2).method.grpo.rewards
    assert [(r.function, r.weight) for r in rewards] == [(str(tmp_path / "r.py"), 2.0), ("parity", 1.0)]
    gate = "\n    gate: {metric: eval_ppl, max: 9}"
    (tmp_path / "g.yaml").write_text(CFG.replace("train: {lr: 5.0e-4}", "train: {lr: 5.0e-4}" + gate))
    with pytest.raises(ConfigError, match=r"stages\[1\] \(dpo\).gate.metric: eval_ppl is logged only for sft"):
        check_run(load_config(tmp_path / "g.yaml"))  # at load time, not after the stage has trained
    (tmp_path / "ok.yaml").write_text(CFG.replace("[{path: sft.jsonl}]}", "[{path: sft.jsonl}]}" + gate))
    assert load_config(tmp_path / "ok.yaml").stages[0].gate.metric == "eval_ppl"


def _run_dir(tmp_path: Path, *, regressed: bool, verdict: str) -> Path:
    """A run directory's eval files as the loop, after_training and compare write them."""
    import json

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 2, "eval_loss": 3.0}\n{"step": 4, "loss": 2.5}\n'
                                       '{"step": 4, "eval_loss": 2.0, "eval_loss/a": 1.5}\n')  # fmt: skip
    final = {"metrics": {"json": {"name": "json", "scores": {"field_accuracy": 0.7, "valid": 1.0}}}}
    (run / "eval" / "final.json").write_text(json.dumps(final))
    row = {"metric": "json", "key": "field_accuracy", "value_a": 0.1, "value_b": 0.7, "ci_low": 0.5,
           "ci_high": 0.7, "verdict": verdict}  # fmt: skip
    (run / "eval" / "comparison.json").write_text(json.dumps({"rows": [row]}))
    fg = {"before": 10.0, "after": 13.0 if regressed else 10.5, "relative_change": 0.3 if regressed else 0.05,
          "threshold": 0.1, "regressed": regressed}  # fmt: skip
    (run / "eval" / "forgetting.json").write_text(json.dumps(fg))
    return run


def test_gate_reads_last_eval_and_final_scores(tmp_path: Path) -> None:
    from tunelab.config import GateConfig
    from tunelab.stages import check_gate

    run = _run_dir(tmp_path, regressed=False, verdict="better")
    assert check_gate(GateConfig(metric="eval_loss", max=2.5), run).passed  # the last eval record: 2.0
    assert check_gate(GateConfig(metric="eval_loss/a", max=1.4), run).failures == ["eval_loss/a = 1.5 > max 1.4"]
    ok = check_gate(GateConfig(metric="json.field_accuracy", min=0.6, improved=True), run)
    assert ok.passed and ok.value == 0.7
    with pytest.raises(Exception, match=r"'json.acc' was not measured.*json.field_accuracy"):
        check_gate(GateConfig(metric="json.acc", min=0.5), run)
    with pytest.raises(ValueError, match="needs min, max or improved"):
        GateConfig(metric="eval_loss")


def test_gate_fails_on_no_improvement_and_forgetting(tmp_path: Path) -> None:
    from tunelab.config import GateConfig
    from tunelab.stages import check_gate

    run = _run_dir(tmp_path, regressed=True, verdict="no significant difference")
    res = check_gate(GateConfig(metric="json.field_accuracy", min=0.5, improved=True), run)
    assert not res.passed and len(res.failures) == 2
    assert "no significant difference" in res.failures[0] and res.failures[1].startswith("forgetting: ")
    assert check_gate(GateConfig(metric="json.field_accuracy", min=0.5, forgetting=False), run).passed
