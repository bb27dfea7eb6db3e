"""Atomic checkpoints under `runs/<name>/checkpoints/step-<N>/`, a retention limit, and resume.

A checkpoint is written into `.tmp-step-<N>` (accelerate's save_state: model, optimizer, scheduler,
per-process RNG states; then our `trainer_state.json` with the step, which is the data position), every
file and the folder are fsynced, and only then renamed to `step-<N>`. A rename within one directory
is atomic, so a `step-*` folder is always complete and a crash mid-write leaves only a `.tmp-*`
folder, which resume ignores and the next save removes. Only trainable tensors are saved (frozen base
weights are rebuilt from the config), so LoRA checkpoints stay small.

Test hook: TUNELAB_TEST_KILL=after_save:N (or during_save:N) SIGKILLs the process right after step N's
checkpoint is renamed (or before the rename), to test resume against real crashes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def latest(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1][1] if found else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE_FILE).read_text())


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_kill(when: str, step: int) -> None:
    if os.environ.get("TUNELAB_TEST_KILL") == f"{when}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save(accelerator: Any, root: Path, step: int, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically (all processes call this); returns its folder."""
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
        _fsync_tree(tmp)
        _test_kill("during_save", step)
        if final.exists():  # same step saved twice (e.g. Ctrl-C right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        _test_kill("after_save", step)
    accelerator.wait_for_everyone()
    return final


def prune(root: Path, keep: int, protect: set[int]) -> None:
    """Keep the newest `keep` checkpoints and those in `protect` (the best one); delete the rest."""
    found = checkpoints(root)
    for step, path in found[: max(0, len(found) - keep)]:
        if step not in protect:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- trainable-only model weights


def register_trainable_only(accelerator: Any) -> None:
    """Save only tensors that require grad; load them non-strictly and check nothing else is missing."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, model in enumerate(models):
            if i < len(weights):
                names = {n for n, p in model.named_parameters() if p.requires_grad}
                weights[i] = {k: v for k, v in weights[i].items() if k in names}

    def load_hook(models: list, input_dir: str) -> None:
        for i, model in enumerate(list(models)):
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            state = load_file(str(Path(input_dir) / name))
            missing, unexpected = model.load_state_dict(state, strict=False)
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            if unexpected or trainable - set(state):
                raise RuntimeError(f"{input_dir}: checkpoint does not match the model (unexpected {unexpected[:3]})")
            models.remove(model)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
