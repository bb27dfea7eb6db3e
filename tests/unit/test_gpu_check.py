"""scripts/gpu_check.py exercised here before it meets a GPU: its wheel installation, a failing and a hanging stage
isolated from the others (each shows in the table, the rest still run), the budget, the JSON/Markdown output, and
(slow) every stage's CPU fallback end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def tiny_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel (a package this Python does not have)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gpucheck_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("gpucheck_probe/__init__.py", "VALUE = 7\n")
        z.writestr(
            "gpucheck_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: gpucheck-probe\nVersion: 1.0\n"
        )
        z.writestr("gpucheck_probe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")  # fmt: skip
        z.writestr("gpucheck_probe-1.0.dist-info/RECORD", "")
    return path


def check(tmp_path: Path, *args: str, timeout: int = 300) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--cpu", "--out", str(out), "--work", str(tmp_path / "work"),
           "--site", str(tmp_path / "site"), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "gpu_check.json").read_text())


def test_a_failing_and_a_hanging_stage_do_not_stop_the_others(tmp_path: Path) -> None:
    tiny_wheel(tmp_path / "wheels")
    proc, doc = check(tmp_path, "--wheels", str(tmp_path / "wheels"), "--only", "_fail", "_hang",
                      "--limit", "_hang=2")  # fmt: skip
    status = {r["stage"]: r["status"] for r in doc["rows"]}
    assert status == {"wheels": "ok", "_fail": "FAILED", "_hang": "timeout"}
    rows = {r["stage"]: r for r in doc["rows"]}
    assert "this stage fails on purpose" in rows["_fail"]["result"] and rows["_hang"]["seconds"] < 30
    assert rows["wheels"]["details"]["installed"] == ["gpucheck_probe-1.0-py3-none-any.whl"]
    assert (tmp_path / "site" / "gpucheck_probe" / "__init__.py").is_file()
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| _fail | FAILED |" in md and "| _hang | timeout |" in md and md.split("\n\n")[1] in proc.stdout


def test_no_stage_starts_once_the_budget_is_spent(tmp_path: Path) -> None:
    _, doc = check(tmp_path, "--wheels", str(tmp_path / "none"), "--budget", "0", "--only", "env", "bf16")
    assert [(r["stage"], r["status"]) for r in doc["rows"]] == [
        ("wheels", "not available"), ("env", "skipped"), ("bf16", "skipped")]  # fmt: skip


@pytest.mark.slow
def test_every_stage_runs_its_cpu_fallback(tmp_path: Path) -> None:
    """The whole check in --cpu mode: what is not possible without a GPU is "not available", the rest passes."""
    limits = [f"--limit={s}=900" for s in ("env", "bf16", "attention", "fsdp", "deepspeed", "bench")]
    _, doc = check(tmp_path, "--budget", "3000", *limits, timeout=3600)
    rows = {r["stage"]: r for r in doc["rows"]}
    assert {k: r["status"] for k, r in rows.items() if r["status"] not in ("ok", "not available")} == {}
    assert [rows[s]["status"] for s in ("env", "bf16", "attention", "fsdp", "bench")] == ["ok"] * 5
    assert rows["qlora"]["status"] == rows["vllm"]["status"] == "not available"
    assert rows["fsdp"]["details"]["full"]["setup"]["type"] == "FSDP"
    assert rows["env"]["details"]["importable"]["pydantic"]  # tunelab itself imported in the stage
    assert [b["mode"] for b in rows["bench"]["details"]["rows"]] == ["full", "lora"]
