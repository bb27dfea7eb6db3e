"""`accelerate launch` with 2 CPU processes (gloo DDP) matches one process with grad_accum 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO
from tests.unit.train.conftest import assert_same_weights, final_weights

from tunelab.api import train
from tunelab.config import dump_config
from tunelab.train.rundir import read_metrics


def test_two_processes_match_grad_accumulation(make_cfg, tmp_path: Path) -> None:
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate launcher not installed next to this python")
    cfg = make_cfg("train.max_steps=3", "train.batch_size=2", "train.group_by_length=false", "tuning.lora.dropout=0")
    path = tmp_path / "ddp.yaml"
    path.write_text(dump_config(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    # `--cpu` selects accelerate's single-process launcher; `--multi_gpu` on a machine without GPUs starts
    # torchrun workers that accelerate runs as MULTI_CPU over gloo (see examples/accelerate/multi_cpu.yaml)
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29517", "-m", "tunelab", "train", str(path),
           "output.name=ddp"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "2 process(es)" in out.stdout
    single = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum": 2})}))
    ddp = Path(cfg.output.dir) / "ddp"
    losses = [[m["loss"] for m in read_metrics(r) if "loss" in m] for r in (ddp, single)]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert_same_weights(final_weights(ddp), final_weights(single), exact=False)
