"""What used to be lost or crash with a raw traceback: a diverging loss, a truncated checkpoint on resume,
a failed checkpoint write (file-size limit, full disk), and a start that fails before training begins."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO
from tests.unit.train.conftest import assert_same_weights, final_weights, write_alpaca

from tunelab.api import train
from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.models.load import load_model, load_tokenizer
from tunelab.quality.card import PreflightError
from tunelab.train import checkpoint as ckpt
from tunelab.train import rundir

FAST = ("eval.baseline=false", "eval.forgetting.enabled=false", "data.check=null")
SAVE_SCRIPT = Path(__file__).with_name("save_checkpoint.py")


# ------------------------------------------------------------------ a diverging loss


def test_nan_loss_stops_the_run_without_saving_a_model(make_cfg, tmp_path: Path) -> None:
    model, tok = load_model(ModelConfig()), load_tokenizer(ModelConfig())
    with torch.no_grad():
        model.model.norm.weight.fill_(math.nan)  # a broken base model: every logit is NaN
    model.save_pretrained(tmp_path / "broken")
    tok.save_pretrained(tmp_path / "broken")
    cfg = make_cfg(f"model.name_or_path={tmp_path / 'broken'}", "train.log_every=2", "output.name=nan", *FAST)
    with pytest.raises(TunelabError, match=r"the loss is nan at step 2 \(lr .*\): training diverged, so no model"):
        train(cfg)
    run = Path(cfg.output.dir) / "nan"
    assert not (run / "final").exists()
    logged = rundir.read_metrics(run)  # the diverged step is on record
    assert [m["step"] for m in logged] == [2] and math.isnan(logged[0]["loss"])


# ------------------------------------------------------------------ resume from a damaged checkpoint


def test_resume_skips_a_truncated_newest_checkpoint(make_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg("train.save_every=2", "output.name=cut", *FAST)
    run = train(cfg)
    root = run / "checkpoints"
    assert ckpt.verify(root / "step-4") is None and ckpt.verify(root / "step-2") is None
    weights = root / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # as a copy cut short, or a disk error, leaves it
    assert "model.safetensors is" in (ckpt.verify(root / "step-4") or "") and "truncated" in ckpt.verify(
        root / "step-4"
    )
    shutil.rmtree(run / "final")
    capsys.readouterr()
    resumed = train(cfg, resume=True)
    out = capsys.readouterr().out
    assert f"--resume: skipping {root / 'step-4'} (model.safetensors is" in out
    assert f"resumed from {root / 'step-2'} (step 2 of 4)" in out
    reference = train(cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "straight"})}))
    assert_same_weights(final_weights(resumed), final_weights(reference), exact=True)  # steps 3-4 replayed


def test_verify_finds_cut_torch_files_and_changed_sizes(make_cfg) -> None:
    root = train(make_cfg("train.save_every=2", "train.max_steps=2", "output.name=v", *FAST)) / "checkpoints"
    step = root / "step-2"
    opt = step / "optimizer.bin"
    good = opt.read_bytes()
    opt.write_bytes(good[: len(good) // 2])
    assert "optimizer.bin is" in (ckpt.verify(step) or "")
    state = json.loads((step / ckpt.STATE_FILE).read_text())
    state.pop("files")  # a checkpoint from before sizes were recorded: the format checks still see it
    (step / ckpt.STATE_FILE).write_text(json.dumps(state))
    assert ckpt.verify(step) == "optimizer.bin: a torch file without its zip directory (truncated)"
    opt.write_bytes(good)
    assert ckpt.verify(step) is None
    (step / ckpt.STATE_FILE).write_text("{not json")
    assert "trainer_state.json is unreadable" in (ckpt.verify(step) or "")


# ------------------------------------------------------------------ a failed checkpoint write


def _save(root: Path, *widths: int, fsize: int | None = None, wrap: tuple[str, ...] = ()) -> dict[str, dict]:
    def limit() -> None:
        if fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # writes past it fail with EFBIG

    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    cmd = [*wrap, sys.executable, str(SAVE_SCRIPT), str(root), *map(str, widths)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_write_over_the_file_size_limit_is_named_and_removed(tmp_path: Path) -> None:
    # width 100: model.safetensors fits under 64 KiB, optimizer.bin does not, and torch's writer fails with only
    # "unexpected pos": the cause comes from the probe write. Width 160: safetensors fails and names the errno.
    free = _save(tmp_path / "free", 100, 160)
    assert free == {"100": {"error": None, "left": ["step-1"]}, "160": {"error": None, "left": ["step-1"]}}
    limited = _save(tmp_path / "limited", 100, 160, fsize=64 * 1024)
    for width, library in (("100", "inline_container"), ("160", "os error 27")):
        error = limited[width]["error"]
        assert error.startswith("checkpoint step-1 not saved: a file is over the file system's or the process's")
        assert "(EFBIG)" in error and library in error, error
        assert limited[width]["left"] == []  # no .tmp-step-1, no probe file


def test_a_full_disk_is_named_as_such(tmp_path: Path) -> None:
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare --mount` (root or user namespaces) to mount a tiny file system")
    mount = tmp_path / "small"
    mount.mkdir()
    wrap = ("unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"', str(mount))
    got = _save(mount, 100, wrap=wrap)["100"]  # a 64 KiB file system: optimizer.bin does not fit
    assert got["error"].startswith("checkpoint step-1 not saved: the disk is full (ENOSPC: no space left on device)")
    assert got["left"] == []


# ------------------------------------------------------------------ a start that fails before training


def test_a_failed_start_does_not_block_the_next_attempt(make_cfg, tmp_path: Path) -> None:
    leaky = write_alpaca(tmp_path / "eval.jsonl", n=3)  # the same generator and seed: copies of train records
    cfg = make_cfg(f"data.eval=[{{path: {leaky}, format: alpaca}}]", "output.name=again", "eval.baseline=false")
    with pytest.raises(PreflightError, match="leak_exact"):
        train(cfg)
    run = Path(cfg.output.dir) / "again"
    assert (run / "data_check.json").is_file() and rundir.failed_start(run)  # the evidence stays
    fixed = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval": []})})
    assert train(fixed) == run and (run / "final").is_dir() and not (run / rundir.STARTING).exists()
    assert json.loads((run / "data_check.json").read_text())["ok"]  # the new attempt's, not the stale one
    with pytest.raises(TunelabError, match="already exists"):  # a run that trained is never taken over
        train(fixed)


def test_a_run_still_starting_in_another_process_is_not_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / rundir.STARTING).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(TunelabError, match=f"being started by process {os.getppid()}"):
        rundir.failed_start(run)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / rundir.STARTING).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert rundir.failed_start(run)  # its starter was killed (or crashed): reusable
