"""A prepared check for a lent GPU machine (one GPU, no network, a ~10-minute window): run it, read one table.

    make gpu-check                                   # = python3 scripts/gpu_check.py
    python3 scripts/gpu_check.py [--out DIR] [--cpu] [--only STAGE ...] [--budget SECONDS]

First the wheels in .whl/ (scripts/gpu_wheels.sh, run where PyPI is reachable) that this Python lacks are
installed with `pip install --no-index --no-deps --target /tmp/site`; every stage then runs with
PYTHONPATH=/tmp/site:src in its own process (scripts/gpu_stages.py) with its own time limit, so one failing or
hanging stage shows its error in the table and the others still run. No stage starts once the budget (default 450
s, under 8 minutes with the table) is spent; each gets at most what is left. This file needs only the standard
library (the machine may lack tunelab's dependencies until the wheels are in).

Stages: env (GPU, versions, what is installed), bf16 (tunelab train, full tuning, precision auto -> bf16),
attention (SDPA flash / efficient / math and flash_attention_2 against eager), qlora (bitsandbytes 4-bit),
fsdp (examples/accelerate/fsdp.yaml on 1 GPU: full with sharded checkpoints, then LoRA), deepspeed (ZeRO-2 and
ZeRO-3 on 1 GPU), bench (training throughput at 350M and 1B: tokens/s, peak memory, MFU), vllm (if installed).
A piece that is not installed is "not available", not a failure. `--cpu` runs every stage's CPU fallback (fp32,
gloo, 2 processes for FSDP and DeepSpeed) on a machine without a GPU: how the script is exercised before a GPU.

Output: the table on stdout, and gpu_check.json + gpu_check.md in --out (default: $OUT, else bench/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES_SCRIPT = REPO / "scripts" / "gpu_stages.py"
# (stage, its own time limit in seconds), in the order they run: the most telling first
STAGES = [("env", 60), ("bf16", 120), ("attention", 60), ("qlora", 120), ("fsdp", 150), ("deepspeed", 180),
          ("bench", 180), ("vllm", 120)]  # fmt: skip
SELF_TEST = [("_fail", 30), ("_hang", 5)]  # stages that fail and hang on purpose (tests of this script)
MIN_START = 15  # seconds a stage needs at least to be worth starting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "results"))
    p.add_argument("--cpu", action="store_true", help="run each stage's CPU fallback (no GPU needed)")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run these stages only (in the usual order)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds after which no stage starts")
    p.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's own time limit")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"))
    p.add_argument("--work", type=Path, default=Path("/tmp/tunelab-gpu-check"))
    args = p.parse_args()
    deadline = time.monotonic() + args.budget
    limits = dict(STAGES + SELF_TEST) | {k: float(v) for k, _, v in (x.partition("=") for x in args.limit)}
    order = [s for s, _ in STAGES + SELF_TEST if s in args.only] if args.only else [s for s, _ in STAGES]
    unknown = set(args.only or []) - set(limits)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; stages: {[s for s, _ in STAGES]}")
    rows = [install_wheels(args.wheels, args.site)]
    env = stage_env(args.site)
    for name in order:
        left = deadline - time.monotonic()
        if left < MIN_START:
            rows.append(row(name, "skipped", 0.0, f"out of time ({args.budget:.0f} s budget spent)"))
            continue
        rows.append(run_stage(name, min(limits[name], left), args, env))
    write(rows, args)


def row(stage: str, status: str, seconds: float, result: str, details: Any = None) -> dict[str, Any]:
    return {"stage": stage, "status": status, "seconds": round(seconds, 1), "result": result, "details": details}


# ------------------------------------------------------------------ wheels


def install_wheels(wheels: Path, site: Path) -> dict[str, Any]:
    """Install the wheels in `wheels` whose distribution this Python lacks and whose tags it supports."""
    t0 = time.monotonic()
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        return row("wheels", "not available", 0.0, f"no wheels in {wheels} (scripts/gpu_wheels.sh makes them)")
    present, unsupported, wanted = [], [], []
    supported = _supported_tags()
    for f in files:
        dist, tags = _wheel_name(f)
        if _installed(dist):
            present.append(dist)
        elif supported is not None and not (tags & supported):
            unsupported.append(f.name)
        else:
            wanted.append(f)
    site.mkdir(parents=True, exist_ok=True)
    how = _pip_install(wanted, site) if wanted else "nothing to install"
    parts = [f"{len(wanted)} installed into {site} ({how})", f"{len(present)} already present"]
    parts += [f"{len(unsupported)} not for this Python: {', '.join(unsupported)}"] if unsupported else []
    details = {"installed": [f.name for f in wanted], "present": present, "unsupported": unsupported}
    return row("wheels", "ok", time.monotonic() - t0, "; ".join(parts), details)


def _wheel_name(f: Path) -> tuple[str, set[str]]:
    """(normalised distribution name, its tags as python-abi-platform strings) from a wheel's file name."""
    parts = f.name[:-4].split("-")
    py, abi, plats = parts[-3], parts[-2], parts[-1]
    tags = {f"{x}-{a}-{pl}" for x in py.split(".") for a in abi.split(".") for pl in plats.split(".")}
    return parts[0].lower().replace("_", "-"), tags


def _supported_tags() -> set[str] | None:
    try:
        from packaging.tags import sys_tags
    except ImportError:  # then every wheel is tried
        return None
    return {str(t) for t in sys_tags()}


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _pip_install(files: list[Path], site: Path) -> str:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
           "--upgrade", *map(str, files)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return "pip"
    for f in files:  # no pip here: a wheel is a zip whose top level belongs on sys.path
        with zipfile.ZipFile(f) as z:
            z.extractall(site)
        for data in site.glob("*.data"):
            for sub in ("purelib", "platlib"):
                for item in (data / sub).glob("*") if (data / sub).is_dir() else []:
                    item.rename(site / item.name)
    return f"unzipped (pip failed: {proc.stderr.strip().splitlines()[-1][:100] if proc.stderr.strip() else '?'})"


# ------------------------------------------------------------------ stages


def stage_env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(x for x in (str(site), str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if x)
    bin_dir = site / "bin"  # ninja and deepspeed's scripts, from the wheels
    return {**os.environ, "PYTHONPATH": path, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def run_stage(name: str, limit: float, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    args.work.mkdir(parents=True, exist_ok=True)
    result, log = args.work / f"{name}.result.json", args.work / f"{name}.stage.log"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(STAGES_SCRIPT), name, "--work", str(args.work), "--result", str(result)]
    cmd += ["--cpu"] if args.cpu else []
    print(f"[{time.strftime('%H:%M:%S')}] {name} (limit {limit:.0f} s)", flush=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return row(name, "timeout", time.monotonic() - t0, f"stopped after {limit:.0f} s; {_tail(log)}")
    took = time.monotonic() - t0
    if code != 0 or not result.is_file():
        return row(name, "FAILED", took, f"exit {code}: {_tail(log)}")
    out = json.loads(result.read_text())
    return row(name, out.get("status", "ok"), took, out.get("result", ""), out.get("details"))


def _kill(proc: subprocess.Popen) -> None:
    """The stage and everything it started (accelerate's workers) are one process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log: Path, lines: int = 2) -> str:
    text = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in text if "Error" in ln or "error" in ln]
    return " | ".join((errors or text)[-lines:])[-400:] or "(no output)"


# ------------------------------------------------------------------ output


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | status | seconds | result |", "|---|---|---:|---|"]
    for r in rows:
        result = str(r["result"]).replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']:.1f} | {result} |")
    return "\n".join(lines)


def bench_table(rows: list[dict[str, Any]]) -> str:
    bench = next((r for r in rows if r["stage"] == "bench" and r["status"] == "ok"), None)
    if not bench:
        return ""
    peak = bench["details"].get("peak_tflops") or {}
    head = (f"\nTraining throughput (tunelab, packed 1024-token rows, batch 8, bf16; bf16 matmul measured "
            f"{peak.get('measured')} TFLOP/s, nominal {peak.get('nominal')}):\n\n")  # fmt: skip
    lines = ["| model | params (M) | tuning | tokens/s | peak memory (GB) | MFU (measured peak) | MFU (nominal) |",
             "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for b in bench["details"]["rows"]:
        lines.append(f"| {b['size']} | {b['params_m']} | {b['mode']} | {b['tokens_per_s']:,} | {b['peak_mem_gb']} "
                     f"| {b.get('mfu_measured_peak')} | {b.get('mfu_nominal_peak')} |")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    md = f"# tunelab GPU check ({time.strftime('%Y-%m-%d %H:%M')}{', CPU fallbacks' if args.cpu else ''})\n\n"
    md += table(rows) + "\n" + bench_table(rows)
    print("\n" + md, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_mode": args.cpu, "budget_s": args.budget, "rows": rows}
    (args.out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(md)
    print(f"written: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
