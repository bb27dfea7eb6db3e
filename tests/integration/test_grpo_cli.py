"""GRPO through the real `tunelab train` CLI: a smoke run with two weighted reward sources (a function and
a tiny saved reward model) under LoRA, an LLM-judge run against a real HTTP server on 127.0.0.1, the
`reward` eval metric before and after training and in `tunelab eval`, resume
after a SIGKILL equal to an uninterrupted run, clear errors, and (slow) the parity toy task raising the
mean reward."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO, run_cli
from tests.unit.methods.test_grpo import _saved_reward_model
from tests.unit.scoring.test_judge import server  # noqa: F401 (the scripted judge fixture)
from tests.unit.train.conftest import assert_same_weights, final_weights

from tunelab.api import train
from tunelab.config import dump_config, load_config
from tunelab.errors import TunelabError
from tunelab.scoring.rewards import REWARDS
from tunelab.train.checkpoint import checkpoints
from tunelab.train.rundir import read_metrics

EXAMPLE = REPO / "examples" / "grpo-parity.yaml"
QUICK = ("train.threads=1", "data.check=null", "eval.forgetting.enabled=false")


def train_rows(run: Path) -> list[dict]:
    return [m for m in read_metrics(run) if "loss" in m]


def test_smoke_two_sources_lora_metrics_and_final(tmp_path: Path) -> None:
    rm = _saved_reward_model(tmp_path)
    rewards = f"method.grpo.rewards=[{{function: parity}}, {{model: {rm}, weight: 0.5, name: rm}}]"
    run_cli("train", str(EXAMPLE), rewards, "tuning.mode=lora", "method.grpo.group_size=4", "train.max_steps=3",
            "train.eval_every=2", "method.grpo.eval_temperature=0", f"output.dir={tmp_path}", *QUICK[:1])  # fmt: skip
    run = tmp_path / "grpo-parity"
    assert (run / "final" / "adapter_config.json").is_file()
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # the logged reward is the weighted sum of the sources, averaged over completions
        assert r["reward"] == pytest.approx(r["reward/parity"] + 0.5 * r["reward/rm"], abs=1e-6)
        assert 0 <= r["reward/parity"] <= 1 and r["reward/std"] >= 0 and 1 <= r["completion_length"] <= 4
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: LoRA B = 0, policy == reference
    assert rows[-1]["kl"] > 0
    evals = [m for m in read_metrics(run) if "eval_loss" in m]
    assert [e["step"] for e in evals] == [2, 3]
    report = json.loads((run / "data_report.json").read_text())
    assert report["train_examples"] == 12 and report["eval_examples"] == 4  # 16 prompts, eval_ratio 0.25


def test_judge_reward_through_the_cli(server, tmp_path: Path) -> None:  # noqa: F811
    judge = (f"{{base_url: 'http://127.0.0.1:{server.server_port}/v1', api_key_env: null, max_retries: 0, "
             f"cache_path: {tmp_path / 'judge.sqlite'}}}")  # fmt: skip
    run_cli("train", str(EXAMPLE), f"method.grpo.rewards=[{{judge: {judge}}}]", "method.grpo.group_size=2",
            "train.max_steps=2", f"output.dir={tmp_path}", *QUICK)  # fmt: skip
    rows = train_rows(tmp_path / "grpo-parity")
    # the scripted judge gives 2 of [1, 10] to every answer without the word "correct": (2 - 1) / 9
    assert [r["reward"] for r in rows] == pytest.approx([1 / 9, 1 / 9])
    evals = [m for m in read_metrics(tmp_path / "grpo-parity") if "eval_loss" in m]
    assert [m["eval_loss"] for m in evals] == pytest.approx([-1 / 9])  # minus the mean reward of the eval completions
    assert [m["eval_reward"] for m in evals] == pytest.approx([1 / 9])
    assert all(r["judge/failed"] == 0 and r["judge/unparseable"] == 0 for r in rows)
    asked = [r["body"]["messages"][1]["content"] for r in server.requests]
    assert len(asked) >= 2 * 2 * 2 and all("[Question]\n" in a and " number\n" in a for a in asked)
    assert (tmp_path / "judge.sqlite").stat().st_size > 0


def test_reward_metric_before_and_after_training_and_in_tunelab_eval(tmp_path: Path) -> None:
    prompts = tmp_path / "held_out.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Give an {p} number"}) + "\n" for p in ["even", "odd"] * 3))
    run_cli("train", str(EXAMPLE), f"data.eval=[{{path: {prompts}, format: prompt}}]", "data.eval_ratio=0",
            "eval.metrics=[reward]", "eval.max_new_tokens=4", "method.grpo.group_size=4", "train.max_steps=2",
            f"output.dir={tmp_path}", *QUICK)  # fmt: skip
    run = tmp_path / "grpo-parity"
    for name in ("baseline", "final"):  # scored by the run's own reward (method.grpo.rewards: parity)
        result = json.loads((run / "eval" / f"{name}.json").read_text())
        per = result["metrics"]["reward"]["per_example"]["reward"]
        want = [REWARDS["parity"](f"Give an {p} number", out) for p, out in zip(["even", "odd"] * 3,
                                                                                   result["predictions"])]  # fmt: skip
        assert per == pytest.approx(want) and result["metrics"]["reward"]["details"]["missing"] == 0
    rows = json.loads((run / "eval" / "comparison.json").read_text())["rows"]
    assert [(r["metric"], r["key"], r["n"]) for r in rows] == [("reward", "reward", 6)]
    assert "| reward | " in (run / "report.md").read_text()
    out = run_cli("eval", str(run), "--data", str(prompts), "-s", "eval.metrics=[reward]", "-s",
                  "eval.rewards=[{function: number}, {function: parity, weight: 0}]", "-s", "eval.max_new_tokens=4")  # fmt: skip
    assert "reward/number=" in out.stdout and "reward/parity=" in out.stdout  # the given sources, not the run's


def test_a_bad_eval_reward_source_stops_before_training(tmp_path: Path) -> None:
    cfg = load_config(REPO / "examples" / "sft-lora.yaml", ["eval.metrics=[reward]", "eval.rewards=[{function: nope.py}]",
                                                            "eval.baseline=false", f"output.dir={tmp_path}", *QUICK])  # fmt: skip
    with pytest.raises(TunelabError, match="reward function 'nope.py': expected one of parity, number"):
        train(cfg)
    assert not any(tmp_path.iterdir())  # not after an hour of training, with a run directory left behind


def test_resume_after_sigkill_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, ["method.grpo.group_size=4", "train.max_steps=4", "train.save_every=2",
                                "train.eval_every=100", f"output.dir={tmp_path}", "output.name=killed", *QUICK])  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TUNELAB_TEST_KILL="after_save:2")
    killed = subprocess.run([sys.executable, "-m", "tunelab", "train", str(path)], env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "killed"
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [2] and not (run / "final").exists()
    train(cfg, resume=True)
    assert [r["step"] for r in train_rows(run)] == [1, 2, 3, 4]
    straight = train(cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "straight"})}))
    # sampling draws from the restored RNG state and the data position is the step: the same samples
    assert [r["reward"] for r in train_rows(run)] == [r["reward"] for r in train_rows(straight)]
    assert_same_weights(final_weights(run), final_weights(straight), exact=True)


def test_bad_reward_and_prompt_data_are_clear_errors(tmp_path: Path) -> None:
    out = run_cli("train", str(EXAMPLE), "method.grpo.rewards=[{function: parityy}]", f"output.dir={tmp_path}",
                  *QUICK, check=False)  # fmt: skip
    assert out.returncode == 2 and "reward function 'parityy': expected one of parity, number" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "grpo-parity").exists()  # stopped before any work
    (tmp_path / "texts.jsonl").write_text('{"text": "no prompt here"}\n')
    data = f"data.train=[{{path: {tmp_path / 'texts.jsonl'}}}]"
    out = run_cli("train", str(EXAMPLE), data, f"output.dir={tmp_path}", *QUICK, check=False)
    assert out.returncode == 2 and "texts.jsonl, line 1" in out.stderr and "method grpo needs a prompt" in out.stderr


@pytest.mark.slow  # ~30 s on a quiet 2-core CPU, 60-90 s on a loaded one
def test_parity_toy_task_raises_mean_reward(tmp_path: Path) -> None:
    run_cli("train", str(EXAMPLE), f"output.dir={tmp_path}", "train.threads=1")
    rows = train_rows(tmp_path / "grpo-parity")
    rewards = [r["reward"] for r in rows]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert len(rewards) == 30 and last > max(3 * first, 0.15), [round(x, 3) for x in rewards]
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference
    evals = [-m["eval_loss"] for m in read_metrics(tmp_path / "grpo-parity") if "eval_loss" in m]
    assert evals[-1] > evals[0], evals  # sampled eval reward on held-out prompts rises too
