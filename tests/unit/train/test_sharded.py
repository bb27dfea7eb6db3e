"""FSDP2 on 2 CPU processes (gloo) through `accelerate launch` with the shipped examples/accelerate/fsdp.yaml
(num_processes 2, mixed_precision no): each run equals one process with grad_accum 2, for full, freeze and LoRA
tuning and for DPO with its reference (a frozen copy; the adapters switched off); checkpoints are sharded and
resume after SIGKILL equals an uninterrupted run; final/ is gathered and loads with plain transformers / peft.
The base model is a folder (the tiny preset saved), so loading goes through from_pretrained as for a real model,
and ties the LM head to the embeddings (as small real models do). What really ran is read from environment.json;
setups that would fall back silently are refused. DeepSpeed: tests/unit/train/test_deepspeed_cpu.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
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

from tunelab.config import load_config
from tunelab.train.checkpoint import checkpoints, verify
from tunelab.train.distributed import _launch_options
from tunelab.train.rundir import read_metrics

# ------------------------------------------------------------------ make test-all


@pytest.mark.slow
def test_the_issues_fsdp_config_really_shards_on_cpu(make_cfg, model_folder: Path, tmp_path: Path) -> None:
    """fsdp.yaml with use_cpu: true used to run plain data parallel (model.safetensors checkpoints) without a word;
    now FSDP2 runs over gloo, its checkpoints are sharded, and environment.json says so."""
    cfg = make_cfg(*COMMON, f"model.name_or_path={model_folder}", "tuning.mode=full", "train.save_every=3")
    out = launch(accelerate_config(tmp_path, use_cpu=True), cfg, "output.name=fsdp")
    ok(out)
    run = Path(cfg.output.dir) / "fsdp"
    setup = setup_of(run)
    assert (setup["type"], setup["world_size"], setup["backend"], setup["device"]) == ("FSDP", 2, "gloo", "cpu")
    assert setup["sharding"]["strategy"] == "FULL_SHARD" and setup["sharding"]["fsdp_version"] == 2
    assert (setup["per_process_batch"], setup["grad_accum"], setup["global_batch"]) == (2, 1, 4)
    assert "distributed: FSDP2 FULL_SHARD on 2 process(es) (gloo, cpu)" in out.stdout
    step = run / "checkpoints" / "step-3"
    shards = sorted(p.name for p in (step / "pytorch_model_fsdp_0").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"] and not (step / "model.safetensors").exists()
    assert (
        verify(step) is None
        and "pytorch_model_fsdp_0/__1_0.distcp" in json.loads((step / "trainer_state.json").read_text())["files"]
    )
    assert (
        "## Training setup" in (run / "report.md").read_text() and "FSDP2 FULL_SHARD" in (run / "report.md").read_text()
    )
    assert_equal_runs(run, one_process(cfg))
    assert_loads_plainly(run, model_folder)


# ------------------------------------------------------------------ quick (make test): refusals


def test_one_process_from_a_two_process_fsdp_config_is_refused(make_cfg, tmp_path: Path) -> None:
    """`--cpu` makes accelerate start one plain process whatever the config asks: refused, not run."""
    cfg = make_cfg(*COMMON, "tuning.mode=full")
    out = launch(accelerate_config(tmp_path), cfg, "output.name=cpu", launch_args=("--cpu",))
    refused(out, "error: the launcher asked for 2 processes but 1 started")
    assert not (Path(cfg.output.dir) / "cpu" / "checkpoints").exists()


def test_fsdp_version_1_on_cpu_is_refused(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(*COMMON, "tuning.mode=full")
    accel = accelerate_config(tmp_path, fsdp_config={"fsdp_version": 1, "fsdp_sharding_strategy": "FULL_SHARD"})
    out = launch(accel, cfg, "output.name=v1")
    refused(out, "error: FSDP version 1 cannot run on CPU processes")


def test_launch_options_are_read_up_to_the_script() -> None:
    argv = ["--config_file", "f.yaml", "--cpu", "--num_processes=2", "--main-process-port", "9", "-m", "tunelab",
            "train", "--num_processes", "8"]  # fmt: skip
    assert _launch_options(argv) == {"config_file": "f.yaml", "cpu": "", "num_processes": "2", "main_process_port": "9"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["freeze", "lora"])  # full: the test above
def test_fsdp_equals_one_process(mode: str, make_cfg, model_folder: Path, tmp_path: Path) -> None:
    cfg = make_cfg(
        *COMMON, f"model.name_or_path={model_folder}", f"tuning.mode={mode}", "tuning.freeze.trainable_layers=1"
    )
    ok(launch(accelerate_config(tmp_path), cfg, "output.name=fsdp"))
    run = Path(cfg.output.dir) / "fsdp"
    assert setup_of(run)["type"] == "FSDP"
    assert_equal_runs(run, one_process(cfg))
    assert_loads_plainly(run, model_folder)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp_dpo_with_its_reference_equals_one_process(mode: str, model_folder: Path, tmp_path: Path) -> None:
    """full: the reference is a frozen copy beside the sharded policy; lora: the policy with its adapters off."""
    over = [*COMMON, f"model.name_or_path={model_folder}", f"tuning.mode={mode}", "data.eval_ratio=0", "train.lr=5e-3",
            "train.warmup_ratio=0", f"output.dir={tmp_path / 'runs'}"]  # fmt: skip
    cfg = load_config(REPO / "examples" / "dpo-lora.yaml", over)
    ok(launch(accelerate_config(tmp_path), cfg, "output.name=fsdp"))
    run = Path(cfg.output.dir) / "fsdp"
    assert_equal_runs(run, one_process(cfg))
    assert train_losses(run)[-1] < train_losses(run)[0]  # the policy moved away from its reference
    assert_loads_plainly(run, model_folder)


@pytest.mark.slow
def test_fsdp_resume_after_sigkill_equals_uninterrupted(make_cfg, model_folder: Path, tmp_path: Path) -> None:
    cfg = make_cfg(*COMMON, "train.max_steps=4", "train.save_every=2", f"model.name_or_path={model_folder}",
                   "tuning.mode=full", "output.name=killed")  # fmt: skip
    accel = accelerate_config(tmp_path)
    killed = launch(accel, cfg, env={"TUNELAB_TEST_KILL": "after_save:2"})
    assert killed.returncode != 0
    run = Path(cfg.output.dir) / "killed"
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [2] and not (run / "final").exists()
    ok(launch(accel, cfg, "--resume"))
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2, 3, 4]
    ok(launch(accel, cfg, "output.name=straight"))
    straight = Path(cfg.output.dir) / "straight"
    assert train_losses(run) == train_losses(straight)
    assert_same_weights(final_weights(run), final_weights(straight), exact=True)
    assert sorted(load_file(str(run / "final" / "model.safetensors"))) == sorted(final_weights(straight))
