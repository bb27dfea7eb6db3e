"""tunelab vs TRL SFTTrainer (+ peft LoRA) on the same CPU fine-tuning job; writes bench/results/.

    python bench/train_bench.py [--sizes tiny-4m tiny-30m] [--repeats 1] [--seeds 0] [--limit N] [--quick]
                                [--threads 1] [--set KEY=VALUE ...] [--trace]

For each model size: write the shared 90/10 split and the preset model folder, then run the tools
alternately (tunelab, trl, tunelab, trl, ... for --repeats rounds, each round once per training seed of
--seeds), each in a fresh subprocess (bench/worker.py). Tokens/s, MFU and the table use the median fit
time per tool and size, the eval loss the mean over runs (with min-max when there are several seeds);
every single run is kept in the JSON. `--quick` = 64 records, one size (tiny-4m): for checking the harness,
not for numbers. `--limit N` uses the first N records of the file (before the split) and is recorded in the
output. `--set` passes a tunelab config override to its runs (ablations; recorded). `--trace` records
memory after every optimizer step of both tools (worker.Trace) into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import peak  # noqa: E402


def run_worker(
    tool: str, work: Path, model_dir: Path, args: argparse.Namespace, seed: int, tag: str, batch_rows: int
) -> dict[str, Any]:
    out = work / f"{tag}.json"
    cmd = [sys.executable, str(HERE / "worker.py"), "--tool", tool, "--work", str(work), "--model", str(model_dir),
           "--out", str(out), "--threads", str(args.threads), "--seed", str(seed)]  # fmt: skip
    if tool == "tunelab":  # its packed batch first, so that a --set can override it
        cmd += [f"--set=train.batch_size={batch_rows}"] if args.match_steps else []
        cmd += [f"--set={x}" for x in args.set]
    if args.trace:
        cmd.append("--trace")
    env_note = time.strftime("%H:%M:%S")
    print(f"[{env_note}] {tag}: {' '.join(cmd[1:])}", flush=True)
    # this checkout's src/ first: the installed editable tunelab may point at another checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{tag} failed (exit {proc.returncode})")
    res = json.loads(out.read_text())
    print(f"    fit {res['fit_s']:.1f} s, eval loss {res['eval_loss']:.4f}, peak RSS {res['peak_rss_mb']:.0f} MB")
    return res


def bench_size(size: str, args: argparse.Namespace, peak_gflops: float) -> dict[str, Any]:
    from transformers import AutoTokenizer

    work = args.work / size
    split = common.write_split(work, args.limit)
    model_dir = work / "model"
    n_params = common.save_model(size, model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    train_ex = common.encode_file(work / "train.json", tok)
    counts = common.token_counts(train_ex)
    packed = common.packed_batch(train_ex)
    if args.match_steps:
        print(
            f"tunelab packs {len(train_ex)} examples into {packed['rows']} rows: batch of {packed['batch_rows']} rows"
        )
    flops = common.train_flops(n_params, counts, common.model_dims(model_dir))
    runs: list[dict[str, Any]] = []
    rounds = [(r, seed) for r in range(args.repeats) for seed in args.seeds]
    for i, (r, seed) in enumerate(rounds):
        for tool in ("tunelab", "trl") if i % 2 == 0 else ("trl", "tunelab"):
            tag = f"{tool}-{r}-s{seed}"
            runs.append(run_worker(tool, work, model_dir, args, seed, tag, packed["batch_rows"]) | {"round": r})
    summary = {}
    for tool in ("tunelab", "trl"):
        mine = [x for x in runs if x["tool"] == tool]
        fit = statistics.median(x["fit_s"] for x in mine)
        summary[tool] = {
            "fit_s": fit,
            "tokens_per_s": counts["tokens"] / fit,
            "loss_tokens_per_s": counts["loss_tokens"] / fit,
            "peak_rss_mb": max(x["peak_rss_mb"] for x in mine),
            "eval_loss": statistics.mean(x["eval_loss"] for x in mine),
            "eval_loss_range": [min(x["eval_loss"] for x in mine), max(x["eval_loss"] for x in mine)],
            "mfu": flops / fit / (peak_gflops * 1e9),
        }
    ratio = summary["tunelab"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
    return {"size": size, "params": n_params, "split": split, "limit": args.limit, "seeds": args.seeds,
            "tunelab_overrides": args.set, "tunelab_packing": packed | {"match_steps": args.match_steps}, **counts,
            "model_flops": flops, "summary": summary, "speedup": ratio, "runs": runs}  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | records (train/eval) | tool | fit time (s) | tokens/s | peak RSS (MB) | eval loss | MFU |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for tool, s in res["summary"].items():
            lo, hi = s["eval_loss_range"]
            spread = f" ({lo:.4f}-{hi:.4f})" if hi > lo else ""
            lines.append(
                f"| {res['size']} ({res['params'] / 1e6:.1f}M) | {res['split']['train']}/{res['split']['eval']} "
                f"| {tool} | {s['fit_s']:.1f} | {s['tokens_per_s']:,.0f} | {s['peak_rss_mb']:.0f} "
                f"| {s['eval_loss']:.4f}{spread} | {s['mfu']:.1%} |"
            )
    lines.append("")
    lines += [f"- {r['size']}: tunelab / TRL tokens/s = **{r['speedup']:.2f}x**" for r in results]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(common.SIZES), choices=common.SIZES)
    p.add_argument("--repeats", type=int, default=1, help="rounds of (tunelab, trl) runs, alternating order")
    p.add_argument("--seeds", type=int, nargs="+", default=[common.JOB["seed"]], help="training seeds (each a round)")
    p.add_argument("--set", action="append", default=[], help="tunelab config override KEY=VALUE (ablations)")
    p.add_argument(
        "--match-steps",
        action="store_true",
        help="tunelab's packed batch holds ~8 examples, so it takes TRL's optimizer steps (default: 8 rows)",
    )
    p.add_argument("--trace", action="store_true", help="record memory after every optimizer step (both tools)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records of the data file")
    p.add_argument("--quick", action="store_true", help="64 records, tiny-4m only: a harness check")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: see bench/README.md)")
    p.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench"))
    p.add_argument("--name", default=None, help="result file stem (default: train-<sizes>[-limitN|-quick])")
    args = p.parse_args()
    if args.quick:
        args.limit, args.sizes = 64, ["tiny-4m"]
    machine = common.machine()
    pk = peak.measure(args.threads)
    print(f"machine: {machine}\npeak fp32 matmul on {args.threads} threads: {pk['peak_gflops']:.1f} GFLOP/s")
    results = [bench_size(size, args, pk["peak_gflops"]) for size in args.sizes]
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    stem = args.name or "train-" + "-".join(args.sizes) + (
        "-quick" if args.quick else f"-limit{args.limit}" if args.limit else ""
    )
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    doc = {"machine": machine, "peak": pk, "job": common.JOB, "threads": args.threads, "results": results,
           "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    md = (f"# {stem} ({doc['date']})\n\nMachine: {machine['cpu']}, {machine['logical_cores']} logical cores, "
          f"load average at start {machine['loadavg_at_start']}, at end {machine['loadavg_at_end']}; "
          f"{args.threads} torch threads; measured fp32 matmul peak {pk['peak_gflops']:.1f} GFLOP/s.\n\n"
          f"{table(results)}\n")  # fmt: skip
    (out_dir / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
