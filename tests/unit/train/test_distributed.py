"""`accelerate launch` with 2 CPU processes (gloo DDP) matches one process with grad_accum 2: for SFT, for DPO
with LoRA (the reference is the adapter switched off, inside the DDP-wrapped module) and for a classification
head trained in full. (NER is left out: transformers' token-classification head has dropout 0.1, so the
processes draw different masks than one process does.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO
from tests.integration.test_heads_cli import topic_rows
from tests.unit.train.conftest import assert_same_weights, final_weights

from tunelab.api import train
from tunelab.config import RunConfig, dump_config, load_config
from tunelab.train.rundir import read_metrics

COMMON = ["train.max_steps=3", "train.batch_size=2", "train.group_by_length=false", "train.log_every=1",
          "train.threads=1", "data.check=null", "eval.forgetting.enabled=false"]  # fmt: skip


def dpo_cfg(make_cfg, tmp_path: Path) -> RunConfig:
    over = [*COMMON, "tuning.lora.dropout=0", "data.eval_ratio=0", "train.lr=5e-3", f"output.dir={tmp_path / 'runs'}"]
    return load_config(REPO / "examples" / "dpo-lora.yaml", over)


def classify_cfg(make_cfg, tmp_path: Path) -> RunConfig:
    (tmp_path / "topics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in topic_rows(40, seed=0)))
    cfg = {"model": {"name_or_path": "tiny-1m"}, "tuning": {"mode": "full"}, "method": {"name": "classify"},
           "data": {"train": [{"path": "topics.jsonl"}], "eval_ratio": 0.2, "max_length": 64},
           "train": {"lr": 3e-3}, "output": {"dir": str(tmp_path / "runs")}}  # fmt: skip
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp_path / "cls.yaml", COMMON)


CASES = {
    "sft": lambda make_cfg, tmp_path: make_cfg(*COMMON[:4], "tuning.lora.dropout=0"),
    "dpo": dpo_cfg,
    "classify": classify_cfg,
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_grad_accumulation(case: str, make_cfg, tmp_path: Path) -> None:
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate launcher not installed next to this python")
    cfg = CASES[case](make_cfg, tmp_path)
    path = tmp_path / "ddp.yaml"
    path.write_text(dump_config(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    # `--cpu` selects accelerate's single-process launcher; `--multi_gpu` on a machine without GPUs starts
    # torchrun workers that accelerate runs as MULTI_CPU over gloo (see examples/accelerate/multi_cpu.yaml)
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(29517 + list(CASES).index(case)), "-m", "tunelab",
           "train", str(path), "output.name=ddp"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "2 process(es)" in out.stdout and out.stdout.count("run saved to") == 1  # said by the main process only
    single = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum": 2})}))
    ddp = Path(cfg.output.dir) / "ddp"
    losses = [[m["loss"] for m in read_metrics(r) if "loss" in m] for r in (ddp, single)]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    printed = [x for x in out.stdout.splitlines() if x.startswith("step ") and "  loss " in x]
    assert len(printed) == len(losses[0]) and "\r" not in out.stdout + out.stderr  # one line per log, main only
    assert_same_weights(final_weights(ddp), final_weights(single), exact=False)
