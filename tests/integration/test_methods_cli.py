"""Preference methods through the real training CLI: DPO with LoRA on the shared demo pairs, and a
two-stage SFT -> DPO config whose second stage starts from the first stage's merged result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml
from tests.conftest import REPO, shared_path


def train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dpo_lora_on_demo_pairs(tmp_path: Path) -> None:
    demo = shared_path("data", "preference_demo", "dpo_en_demo.json")
    train_cli(str(REPO / "examples" / "dpo-lora.yaml"), f"data.train=[{{path: {demo}, format: preference}}]",
              "train.max_steps=3", "train.log_every=1",
              "train.eval_every=100", f"output.dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "dpo-lora"
    assert (run / "final" / "adapter_config.json").is_file()
    recs = records(run / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(0 <= r["rewards/accuracy"] <= 1 and "rewards/margins" in r for r in train)  # the method's own metrics
    assert train[0]["rewards/margins"] == pytest_approx(0.0)  # policy == reference at step 1
    assert train[0]["loss"] == pytest_approx(math.log(2))  # step 1: adapter B = 0, policy == reference
    evals = [r for r in recs if "eval_loss" in r]
    assert evals and all(0 <= r["eval_rewards/accuracy"] <= 1 and "eval_rewards/margins" in r for r in evals)
    assert not any("eval_ppl" in r for r in evals)  # a DPO loss is not a token cross-entropy
    assert [r["trained_pairs"] for r in train] == [4, 8, 12]  # the loss is averaged over pairs, not tokens
    report = json.loads((run / "data_report.json").read_text())
    assert report["train_examples"] > 0 and report["datasets"][0]["format"] == "preference"


def test_kto_lora_on_demo_completions(tmp_path: Path) -> None:
    demo = shared_path("data", "preference_demo", "kto_en_demo.json")
    train_cli(str(REPO / "examples" / "dpo-lora.yaml"), "method.name=kto", f"data.train=[{{path: {demo}, format: kto}}]",
              "train.max_steps=3", "train.log_every=1", "train.lr=5e-3", "train.eval_every=100", "output.name=kto",
              f"output.dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    recs = records(tmp_path / "kto" / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    assert train[0]["loss"] == pytest_approx(0.5) and train[0]["kl"] == 0  # policy == reference: 1 - sigmoid(0)
    assert train[-1]["loss"] < 0.5 and train[-1]["kl"] > 0  # it moved
    assert [r["trained_completions"] for r in train] == [4, 8, 12]
    assert all(r["n/desirable"] + r["n/undesirable"] == pytest_approx(1.0) for r in train)
    evals = [r for r in recs if "eval_loss" in r]
    assert evals and "eval_rewards/desirable" in evals[-1] and "eval_ppl" not in evals[-1]
    report = json.loads((tmp_path / "kto" / "data_report.json").read_text())
    assert report["datasets"][0]["format"] == "kto" and report["train_examples"] == 285  # 300 minus the 5% eval


def pytest_approx(x: float):  # noqa: ANN201
    import pytest

    return pytest.approx(x, abs=1e-4)


def test_two_stage_sft_then_dpo(tmp_path: Path) -> None:
    shared_path("data", "preference_demo", "dpo_en_demo.json")
    cfg = yaml.safe_load((REPO / "examples" / "sft-then-dpo.yaml").read_text())
    cfg["stages"][0]["data"]["train"][0]["path"] = str(REPO / "examples" / "data" / "tiny_sft.jsonl")
    cfg["stages"][1]["data"]["train"][0]["path"] = str(shared_path("data", "preference_demo", "dpo_en_demo.json"))
    cfg["stages"][1]["train"]["max_steps"] = 3
    cfg["output"]["dir"] = str(tmp_path / "runs")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    proc = train_cli(str(tmp_path / "two.yaml"), cwd=tmp_path)
    root = tmp_path / "runs" / "sft-then-dpo"
    sft, dpo = root / "1-sft", root / "2-dpo"
    assert (sft / "merged" / "config.json").is_file() and (dpo / "final" / "adapter_config.json").is_file()
    dpo_cfg = yaml.safe_load((dpo / "config.yaml").read_text())
    assert dpo_cfg["model"]["name_or_path"] == str(sft / "merged")
    assert dpo_cfg["method"]["name"] == "dpo" and dpo_cfg["train"]["lr"] == 5.0e-4  # stage override merged
    assert dpo_cfg["train"]["batch_size"] == 4  # top-level setting kept
    assert str(dpo) in proc.stdout
    gate = json.loads((root / "stages.json").read_text())[0]["gate"]
    assert gate["metric"] == "eval_loss" and gate["passed"] and gate["value"] <= 5.5
