"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (DeepSpeed's CPU accelerator, gloo) through `accelerate launch`
with the shipped examples/accelerate/deepspeed_zero*.yaml (num_processes 2, mixed_precision no): equal to one
process with grad_accum 2, final/ gathered and loadable, resume after SIGKILL equal to an uninterrupted run, and
the settings tunelab cannot honour refused. DeepSpeed is kept out of .venv (transformers' save_pretrained imports it
whenever it is installed, seconds per save in every other test): `make deepspeed-deps` puts it in .deps/deepspeed,
and its CPU communication op is compiled once into .deps/torch_extensions (minutes, the first time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.conftest import REPO
from tests.unit.train.conftest import assert_same_weights, final_weights
from tests.unit.train.launching import (
    COMMON,
    accelerate_config,
    assert_equal_runs,
    assert_loads_plainly,
    launch,
    ok,
    one_process,
    refused,
    setup_of,
    train_losses,
)

from tunelab.train.checkpoint import checkpoints, verify

DEPS = REPO / ".deps" / "deepspeed"
pytestmark = pytest.mark.slow


@pytest.fixture
def ds_env() -> dict[str, str]:
    if not (DEPS / "deepspeed").is_dir():
        pytest.skip(f"DeepSpeed is not in {DEPS} (make deepspeed-deps installs it there)")
    return {
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{DEPS}",
        "PATH": f"{DEPS / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",  # ninja, for the JIT-compiled op
        "TORCH_EXTENSIONS_DIR": str(REPO / ".deps" / "torch_extensions"),  # kept: the tests' HOME is temporary
    }


@pytest.mark.parametrize(("stage", "mode"), [(2, "full"), (3, "full"), (2, "lora")])
def test_zero_equals_one_process(stage: int, mode: str, make_cfg, model_folder: Path, tmp_path: Path,
                                 ds_env: dict[str, str]) -> None:  # fmt: skip
    cfg = make_cfg(*COMMON, f"model.name_or_path={model_folder}", f"tuning.mode={mode}", "train.save_every=3")
    ok(launch(accelerate_config(tmp_path, f"deepspeed_zero{stage}.yaml"), cfg, "output.name=ds", env=ds_env))
    run = Path(cfg.output.dir) / "ds"
    setup = setup_of(run)
    assert (setup["type"], setup["sharding"]["strategy"], setup["world_size"]) == ("DEEPSPEED", f"ZeRO-{stage}", 2)
    step = run / "checkpoints" / "step-3"
    assert (step / "pytorch_model").is_dir() and verify(step) is None
    assert_equal_runs(run, one_process(cfg))
    assert_loads_plainly(run, model_folder)


def test_zero3_resume_after_sigkill_equals_uninterrupted(make_cfg, model_folder: Path, tmp_path: Path,
                                                         ds_env: dict[str, str]) -> None:  # fmt: skip
    cfg = make_cfg(*COMMON, "train.max_steps=4", "train.save_every=2", f"model.name_or_path={model_folder}",
                   "tuning.mode=full", "output.name=killed")  # fmt: skip
    accel = accelerate_config(tmp_path, "deepspeed_zero3.yaml")
    killed = launch(accel, cfg, env={**ds_env, "TUNELAB_TEST_KILL": "after_save:2"})
    assert killed.returncode != 0
    run = Path(cfg.output.dir) / "killed"
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [2] and not (run / "final").exists()
    ok(launch(accel, cfg, "--resume", env=ds_env))
    ok(launch(accel, cfg, "output.name=straight", env=ds_env))
    straight = Path(cfg.output.dir) / "straight"
    assert train_losses(run) == train_losses(straight)
    assert_same_weights(final_weights(run), final_weights(straight), exact=True)


def test_what_deepspeed_would_do_differently_is_refused(make_cfg, tmp_path: Path, ds_env: dict[str, str]) -> None:
    """DeepSpeed steps on every backward and clips by its own setting: both would silently change the run."""
    accel = accelerate_config(tmp_path, "deepspeed_zero2.yaml")
    refused(launch(accel, make_cfg(*COMMON, "train.grad_accum=2"), env=ds_env), "error: train.grad_accum:")
    out = launch(accel, make_cfg(*COMMON, "train.max_grad_norm=0.5", "output.name=clip"), env=ds_env)
    refused(out, "error: train.max_grad_norm is 0.5 but DeepSpeed clips at gradient_clipping: 1.0")
