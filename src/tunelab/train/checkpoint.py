"""Atomic checkpoints under `runs/<name>/checkpoints/step-<N>/`, a retention limit, and resume.

A checkpoint is written into `.tmp-step-<N>` (accelerate's save_state: model, optimizer, scheduler,
per-process RNG states; then our `trainer_state.json` with the step, which is the data position), every
file and the folder are fsynced, and only then renamed to `step-<N>`. A rename within one directory
is atomic, so a `step-*` folder is always complete and a crash mid-write leaves only a `.tmp-*`
folder, which resume ignores and the next save removes. Only trainable tensors are saved (frozen base
weights are rebuilt from the config), so LoRA checkpoints stay small.

trainer_state.json, written last, also lists every file's size. A checkpoint *verifies* when those sizes
match, each safetensors header accounts for exactly its file's bytes and each torch zip file has its
central directory (checks that read headers, not content: they catch truncated and partial copies, not
flipped bits, which a hash would, at the cost of reading gigabytes at every save). A save that verifies
is renamed into place; `--resume` takes the newest one that verifies and loads, saying which it skipped.
A failed write (disk full, quota, file-size limit) removes the partial folder and names the cause:
torch reports a full disk only as "unexpected pos", so the cause is read from the error or, failing
that, from a small probe write next to it.

Test hook: TUNELAB_TEST_KILL=after_save:N (or during_save:N) SIGKILLs the process right after step N's
checkpoint is renamed (or before the rename), to test resume against real crashes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from tunelab.errors import TunelabError

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


def newest_first(root: Path) -> list[Path]:
    return [p for _, p in reversed(checkpoints(root))]


def verify(ckpt: Path) -> str | None:
    """None when checkpoint folder `ckpt` is whole (see the module docstring), else what is wrong with it."""
    try:
        files = read_state(ckpt).get("files")
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    for name, size in (files or {}).items():
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} is {p.stat().st_size:,} bytes but was {size:,} when saved (truncated or changed)"
    for p in sorted(ckpt.rglob("*")):
        problem = _file_problem(p) if p.is_file() else None
        if problem:
            return f"{p.relative_to(ckpt)}: {problem}"
    return None


def _file_problem(p: Path) -> str | None:
    if p.suffix == ".safetensors":
        return _safetensors_problem(p)
    with p.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's format; other files have no check
    if is_zip and not zipfile.is_zipfile(p):
        return "a torch file without its zip directory (truncated)"
    return None


def _safetensors_problem(p: Path) -> str | None:
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"safetensors header cut off ({size:,} bytes)"
        try:
            header = json.loads(f.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "safetensors header is not valid"
    if 8 + n + end != size:
        return f"safetensors file is {size:,} bytes, its header describes {8 + n + end:,} (truncated)"
    return None


def _sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


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
    with written(tmp, f"checkpoint step-{step}", root):
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with written(tmp, f"checkpoint step-{step}", root):
            files = _sizes(tmp)
            (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "files": files}, indent=1))
            _fsync_tree(tmp)
            problem = verify(tmp)
            if problem:  # a write that failed without an error (seen with safetensors on some devices)
                raise OSError(errno.EIO, f"written checkpoint does not verify: {problem}")
        _test_kill("during_save", step)
        if final.exists():  # same step saved twice (e.g. Ctrl-C right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        _test_kill("after_save", step)
    accelerator.wait_for_everyone()
    return final


@contextmanager
def written(folder: Path, what: str, root: Path) -> Iterator[None]:
    """Writes into the temporary `folder`: on failure it is removed and the error names the cause (disk full,
    quota, file-size limit) instead of a library's raw message, and the checkpoint in `root` to resume from."""
    try:
        yield
    except Exception as e:
        cause = write_failure(e, folder.parent)
        shutil.rmtree(folder, ignore_errors=True)
        last = latest(root)
        kept = f"; {last} is intact: rerun with --resume after" if last else "; rerun after"
        raise TunelabError(
            f"{what} not saved: {cause} (writing in {folder.parent}). The partial folder was removed{kept} freeing "
            f"space or pointing output.dir elsewhere. [{type(e).__name__}: {str(e)[:300]}]"
        ) from e


WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full (ENOSPC: no space left on device)",
    errno.EDQUOT: "the disk quota is used up (EDQUOT)",
    errno.EFBIG: "a file is over the file system's or the process's file-size limit (EFBIG)",
    errno.EROFS: "the file system is read-only (EROFS)",
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report errno


def write_failure(exc: BaseException, near: Path) -> str:
    """Why a write failed: the errno in the error or its causes, else a 1 MiB probe write in `near` (torch's
    zip writer loses errno: a full disk reads "unexpected pos"), else the free space there."""
    for e in _chain(exc):
        code = e.errno if isinstance(e, OSError) else None
        m = _OS_ERROR.search(str(e))
        code = code or (int(m.group(1)) if m else None)
        if code in WRITE_ERRORS:
            return WRITE_ERRORS[code]
    probe = near / f".write-probe-{os.getpid()}"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return WRITE_ERRORS.get(e.errno or 0, f"writing failed ({e.strerror})")
    finally:
        probe.unlink(missing_ok=True)
    return f"the write failed ({shutil.disk_usage(near).free / 2**20:,.0f} MiB free there)"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


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
