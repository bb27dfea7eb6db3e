"""The planner against measured runs on this machine: predicted vs measured peak RSS and wall time.

    python bench/plan_check.py                 # every configuration; table -> bench/results/plan_check.md
    python bench/plan_check.py --only tiny-full-128

Each configuration runs in two fresh processes: a calibration (`tunelab.api.plan(..., calibrate=True)`: a few real
steps of the run's micro-batch shape, giving the time per micro-batch) and the measured run, which first plans
memory exactly as `train` does (the runtime term is that process's resident memory before the model loads) and
then trains (`tunelab.api.train`), measuring the wall time of train() and the process's peak RSS (ru_maxrss)
after it. Data: the quickstart task's training split (ships with tunelab), packed into rows of max_length tokens,
so every micro-batch has the planned shape. Evaluation around the run is off (no baseline, no forgetting check,
no data check; eval loss only, over 1% of the data, at the end): the planner estimates the training run.
One torch thread (the machine is shared; see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> (preset, tuning mode, max_length, batch_size, max_steps)
CONFIGS: dict[str, tuple[str, str, int, int, int]] = {
    "tiny-full-128": ("tiny", "full", 128, 8, 60),
    "tiny-lora-512": ("tiny", "lora", 512, 8, 30),
    "tiny-4m-freeze-128": ("tiny-4m", "freeze", 128, 8, 40),
    "tiny-4m-lora-512": ("tiny-4m", "lora", 512, 8, 16),
    "tiny-4m-full-512": ("tiny-4m", "full", 512, 8, 12),
    "tiny-30m-lora-128": ("tiny-30m", "lora", 128, 8, 12),
    "tiny-30m-full-512": ("tiny-30m", "full", 512, 4, 6),
}


def overrides(name: str, work: Path) -> list[str]:
    preset, mode, length, batch, steps = CONFIGS[name]
    return [
        f"model.name_or_path={preset}", f"tuning.mode={mode}", "method.name=sft",
        f"data.train=[{{path: {work / 'train.jsonl'}}}]", "data.eval_ratio=0.01", f"data.max_length={length}",
        "data.packing=true", "data.train_on_inputs=true", "data.check=null", f"data.cache_dir={work / 'cache'}",
        f"train.batch_size={batch}", f"train.max_steps={steps}", "train.threads=1", f"train.log_every={steps}",
        "eval.baseline=false", "eval.forgetting.enabled=false", "eval.metrics=[loss]",
        f"output.dir={work / 'runs'}", f"output.name={name}", "output.overwrite=true",
    ]  # fmt: skip


def calibrate(name: str, work: Path) -> dict:
    from tunelab import api

    cfg = api.load_config(None, overrides(name, work))
    est = api.plan(cfg, calibrate=True)
    return {"seconds_micro": est.seconds_micro, "seconds": est.seconds}


def measure(name: str, work: Path) -> dict:
    from tunelab import api

    cfg = api.load_config(None, overrides(name, work))
    table = api.plan(cfg)  # memory as train plans it; time from the device table (no calibration)
    start = time.perf_counter()
    api.train(cfg)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"predicted_bytes": table.peak, "terms": table.memory, "measured_bytes": rss, "wall_s": wall,
            "table_seconds": table.total_seconds, "micro_batches": table.micro_batches, "steps": table.steps}  # fmt: skip


def child(mode: str, name: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, f"--{mode}", name, "--work", str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name: str, work: Path) -> dict:
    cal = child("calibrate", name, work)
    got = child("measure", name, work)
    predicted_s = sum(cal["seconds"].values())  # start-up + calibrated micro-batches x their number + evals
    return {"config": name, **dict(zip(("preset", "mode", "seq", "batch", "steps"), CONFIGS[name])),
            "predicted_mb": got["predicted_bytes"] / 2**20, "measured_mb": got["measured_bytes"] / 2**20,
            "predicted_s": predicted_s, "measured_s": got["wall_s"], "table_s": got["table_seconds"],
            "terms_mb": {k: v / 2**20 for k, v in got["terms"].items()}}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = ("| config | tuning | seq | batch | steps | memory predicted (MB) | measured peak RSS (MB) | error | "
            "time predicted (s) | measured (s) | error | time from the device table (s) |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    lines = [head]
    for r in rows:
        me = (r["predicted_mb"] - r["measured_mb"]) / r["measured_mb"]
        te = (r["predicted_s"] - r["measured_s"]) / r["measured_s"]
        lines.append(f"| {r['preset']} | {r['mode']} | {r['seq']} | {r['batch']} | {r['steps']} | "
                     f"{r['predicted_mb']:,.0f} | {r['measured_mb']:,.0f} | {me:+.0%} | {r['predicted_s']:.1f} | "
                     f"{r['measured_s']:.1f} | {te:+.0%} | {r['table_s']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=list(CONFIGS))
    p.add_argument("--calibrate")
    p.add_argument("--measure")
    p.add_argument("--work", type=Path)
    a = p.parse_args()
    if a.calibrate or a.measure:
        out = calibrate(a.calibrate, a.work) if a.calibrate else measure(a.measure, a.work)
        print(json.dumps(out))
        return
    from tunelab.data.quickstart_task import write_splits

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_splits(work)
        rows = [row(name, work) for name in a.only]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_check.json").write_text(json.dumps(rows, indent=1))
    md = table(rows)
    (RESULTS / "plan_check.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
