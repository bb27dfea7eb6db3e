"""Helpers for tests that start several training processes with `accelerate launch` (FSDP, DeepSpeed): a shipped
accelerate config set to 2 CPU processes, the launch itself, the one-process run it must equal, and what to check
in its run folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import REPO
from tests.unit.train.conftest import assert_same_weights, final_weights

from tunelab.api import train
from tunelab.config import RunConfig, dump_config
from tunelab.train.rundir import read_metrics

COMMON = ["train.max_steps=3", "train.batch_size=2", "train.group_by_length=false", "train.log_every=1",
          "train.threads=1", "data.check=null", "eval.forgetting.enabled=false", "tuning.lora.dropout=0"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_config(tmp_path: Path, example: str = "fsdp.yaml", **changes: object) -> Path:
    """A shipped accelerate config, set to 2 CPU processes in fp32 (plus `changes`)."""
    conf = yaml.safe_load((REPO / "examples" / "accelerate" / example).read_text())
    conf |= {"num_processes": 2, "mixed_precision": "no", **changes}
    path = tmp_path / f"accelerate-{example}"
    path.write_text(yaml.safe_dump(conf))
    return path


def launch(accel: Path, cfg: RunConfig, *args: str, env: dict[str, str] | None = None,
           launch_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:  # fmt: skip
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate launcher not installed next to this python")
    path = Path(cfg.output.dir).parent / "run.yaml"
    path.write_text(dump_config(cfg))
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    cmd = [launcher, "launch", "--config_file", str(accel), *launch_args, "--main_process_port", str(free_port()),
           "-m", "tunelab", "train", str(path), *args]  # fmt: skip
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)


def ok(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]


def refused(out: subprocess.CompletedProcess, message: str) -> None:
    """tunelab refused with `message` and no traceback of its own (accelerate's launcher adds one of its own when
    a worker fails, after tunelab's message)."""
    assert out.returncode != 0 and message in out.stderr, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr.split(message)[0]


def one_process(cfg: RunConfig) -> Path:
    """The same run in this process with grad_accum 2: what 2 processes with grad_accum 1 must equal."""
    return train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum": 2}),
                                        "output": cfg.output.model_copy(update={"name": "one"})}))  # fmt: skip


def train_losses(run: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run) if "loss" in m]


def assert_equal_runs(sharded: Path, single: Path) -> None:
    assert len(train_losses(sharded)) == 3 and train_losses(sharded) == pytest.approx(train_losses(single), rel=1e-5)
    assert_same_weights(final_weights(sharded), final_weights(single), exact=False)


def setup_of(run: Path) -> dict:
    return json.loads((run / "environment.json").read_text())["distributed"]


def assert_loads_plainly(run: Path, base: Path) -> None:
    """final/ is a standard folder: plain transformers (and peft for an adapter) load it and it runs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = run / "final"
    if (final / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final)
    else:
        model = AutoModelForCausalLM.from_pretrained(final)
    logits = model(input_ids=torch.tensor([[1, 72, 105]])).logits
    assert logits.shape[-1] == model.config.vocab_size and bool(torch.isfinite(logits).all())
