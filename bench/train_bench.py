"""tunelab vs its peers, TRL SFTTrainer (+ peft LoRA) and LLaMA-Factory, on the same CPU fine-tuning job; writes
bench/results/.

    python bench/train_bench.py [--sizes tiny-4m tiny-30m] [--tools tunelab trl llamafactory] [--repeats 1]
                                [--seeds 0] [--limit N] [--quick] [--threads 1] [--set KEY=VALUE ...] [--trace]
                                [--match-steps] [--lf-packing neat|none]

For each model size: write the shared 90/10 split and the preset model folder, then run the tools in turn
(the order rotates every round; --repeats rounds, each round once per training seed of --seeds), each in a fresh
subprocess (bench/worker.py; LLaMA-Factory inside that in its own venv, bench/lf_train.py). LLaMA-Factory is
skipped with a note when its venv (bench/setup_llamafactory.sh) is missing. Tokens/s, MFU and the table use the
median fit time per tool and size, the eval loss the mean over runs (with min-max when there are several seeds);
every single run is kept in the JSON. The result: tunelab's ratio to the best peer, the peer with the least fit
CPU time among those whose optimizer steps are within 10% of tunelab's. `--quick` = 64 records, one size
(tiny-4m): for checking the harness, not for numbers. `--limit N` uses the first N records of the file (before
the split) and is recorded in the output. `--set` passes a tunelab config override to its runs (ablations;
recorded). `--trace` records memory after every optimizer step of tunelab and TRL (worker.Trace) into the JSON.
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
LF_VENV = Path(os.environ.get("LLAMAFACTORY_VENV", HERE / ".work" / "llamafactory-venv"))  # setup_llamafactory.sh
TOOLS = ("tunelab", "trl", "llamafactory")
COMPARABLE_STEPS = 0.10  # a peer whose optimizer steps differ from tunelab's by more is not "at equal steps"
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
    if tool == "llamafactory":  # neat-packed rows are tunelab's packed rows: the same batch under --match-steps
        lf_batch = batch_rows if args.match_steps and args.lf_packing == "neat" else common.JOB["batch_size"]
        cmd += ["--lf-python", str(LF_VENV / "bin" / "python"), "--lf-packing", args.lf_packing,
                "--lf-batch", str(lf_batch)]  # fmt: skip
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
    print(f"    fit {res['fit_s']:.1f} s ({res['fit_cpu_s']:.1f} CPU s), {res['steps']} steps, "
          f"eval loss {res['eval_loss']:.4f}, peak RSS {res['peak_rss_mb']:.0f} MB")  # fmt: skip
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
        for tool in args.tools[i % len(args.tools) :] + args.tools[: i % len(args.tools)]:
            tag = f"{tool}-{r}-s{seed}"
            runs.append(run_worker(tool, work, model_dir, args, seed, tag, packed["batch_rows"]) | {"round": r})
    summary = {tool: summarize([x for x in runs if x["tool"] == tool], counts, flops, peak_gflops)
               for tool in args.tools}  # fmt: skip
    return {"size": size, "params": n_params, "split": split, "limit": args.limit, "seeds": args.seeds,
            "tunelab_overrides": args.set, "tunelab_packing": packed | {"match_steps": args.match_steps},
            "lf_packing": args.lf_packing if "llamafactory" in args.tools else None, **counts,
            "model_flops": flops, "summary": summary, "peers": compare(summary), "runs": runs}  # fmt: skip


def summarize(mine: list[dict[str, Any]], counts: dict[str, int], flops: float, peak_gflops: float) -> dict[str, Any]:
    """One tool's runs at one size: median times, the tokens it trained on (LLaMA-Factory's own tokenization for
    LF, tunelab's encoder for the other two, which share its token ids), steps, memory, eval loss, MFU."""
    fit = statistics.median(x["fit_s"] for x in mine)
    own = mine[0].get("lf_counts") or {"tokens": counts["tokens"], "loss_tokens": counts["loss_tokens"]}
    return {
        "fit_s": fit,
        "fit_cpu_s": statistics.median(x["fit_cpu_s"] for x in mine),
        "steps": statistics.median(x["steps"] for x in mine),
        "tokens": own["tokens"],
        "loss_tokens": own["loss_tokens"],
        "tokens_per_s": own["tokens"] / fit,
        "loss_tokens_per_s": own["loss_tokens"] / fit,
        "peak_rss_mb": max(x["peak_rss_mb"] for x in mine),
        "eval_loss": statistics.mean(x["eval_loss"] for x in mine),
        "eval_loss_range": [min(x["eval_loss"] for x in mine), max(x["eval_loss"] for x in mine)],
        "mfu": flops / fit / (peak_gflops * 1e9),  # the same model FLOPs for every tool (common.train_flops)
    }


def compare(summary: dict[str, Any]) -> dict[str, Any]:
    """Each peer's time over tunelab's (> 1: tunelab is faster), CPU and wall, and whether its optimizer steps are
    comparable; the best peer is the comparable one with the least CPU time (CPU moves least with others' load)."""
    if "tunelab" not in summary:
        return {}
    me = summary["tunelab"]
    peers = {
        tool: {
            "cpu_ratio": s["fit_cpu_s"] / me["fit_cpu_s"],
            "wall_ratio": s["fit_s"] / me["fit_s"],
            "steps": [me["steps"], s["steps"]],
            "comparable_steps": abs(s["steps"] - me["steps"]) <= COMPARABLE_STEPS * me["steps"],
            "eval_loss_delta": me["eval_loss"] - s["eval_loss"],
        }
        for tool, s in summary.items()
        if tool != "tunelab"
    }
    fair = [t for t, p in peers.items() if p["comparable_steps"]]
    best = min(fair, key=lambda t: summary[t]["fit_cpu_s"]) if fair else None
    return {"by_tool": peers, "best_peer": best}


NAMES = {"tunelab": "tunelab", "trl": "TRL", "llamafactory": "LLaMA-Factory"}


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | records (train/eval) | tool | steps | fit wall (s) | fit CPU (s) | tokens (loss tokens) | tokens/s "
        "| peak RSS (MB) | eval loss | MFU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for tool, s in res["summary"].items():
            lo, hi = s["eval_loss_range"]
            spread = f" ({lo:.4f}-{hi:.4f})" if hi > lo else ""
            lines.append(
                f"| {res['size']} ({res['params'] / 1e6:.1f}M) | {res['split']['train']}/{res['split']['eval']} "
                f"| {NAMES[tool]} | {s['steps']:.0f} | {s['fit_s']:.1f} | {s['fit_cpu_s']:.1f} "
                f"| {s['tokens']:,} ({s['loss_tokens']:,}) | {s['tokens_per_s']:,.0f} | {s['peak_rss_mb']:.0f} "
                f"| {s['eval_loss']:.4f}{spread} | {s['mfu']:.1%} |"
            )
    lines.append("")
    for res in results:
        lines += peer_lines(res)
    return "\n".join(lines)


def peer_lines(res: dict[str, Any]) -> list[str]:
    """The verdict per size: tunelab against each peer, then against the best peer at comparable steps."""
    peers = res["peers"]
    if not peers:
        return []
    out = []
    for tool, p in peers["by_tool"].items():
        note = "" if p["comparable_steps"] else ", NOT comparable"
        steps = f"steps {p['steps'][0]:.0f} vs {p['steps'][1]:.0f}{note}"
        out.append(f"- {res['size']}: {NAMES[tool]} / tunelab fit time = {p['cpu_ratio']:.2f}x CPU, "
                   f"{p['wall_ratio']:.2f}x wall ({steps}; eval loss tunelab - peer = {p['eval_loss_delta']:+.4f})")  # fmt: skip
    best = peers["best_peer"]
    if best is None:
        out.append(f"- {res['size']}: no peer took comparable optimizer steps (within {COMPARABLE_STEPS:.0%}); "
                   "try --match-steps")  # fmt: skip
    else:
        p = peers["by_tool"][best]
        out.append(f"- {res['size']}: **tunelab vs the best peer ({NAMES[best]}) = {p['cpu_ratio']:.2f}x** "
                   f"(its CPU time over tunelab's; wall {p['wall_ratio']:.2f}x)")  # fmt: skip
    return out


def skip_missing(args: argparse.Namespace) -> dict[str, str]:
    """Drop LLaMA-Factory from the run when its bench-only venv is missing (so `make bench` works without it)."""
    python = LF_VENV / "bin" / "python"
    if "llamafactory" not in args.tools or python.is_file():
        return {}
    args.tools = [t for t in args.tools if t != "llamafactory"]
    why = f"no venv at {LF_VENV} (make it with bench/setup_llamafactory.sh)"
    print(f"LLaMA-Factory skipped: {why}", flush=True)
    return {"llamafactory": why}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(common.SIZES), choices=common.SIZES)
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS, help="tools to run (tunelab first)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all tools' runs, rotating the order")
    p.add_argument("--seeds", type=int, nargs="+", default=[common.JOB["seed"]], help="training seeds (each a round)")
    p.add_argument("--set", action="append", default=[], help="tunelab config override KEY=VALUE (ablations)")
    p.add_argument(
        "--match-steps",
        action="store_true",
        help="tunelab's packed batch holds ~8 examples, so it takes TRL's optimizer steps (default: 8 rows)",
    )
    p.add_argument("--trace", action="store_true", help="record memory after every optimizer step (tunelab, TRL)")
    p.add_argument(
        "--lf-packing", choices=["neat", "none"], default="neat", help="LLaMA-Factory: neat_packing or padded batches"
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N records of the data file")
    p.add_argument("--quick", action="store_true", help="64 records, tiny-4m only: a harness check")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: see bench/README.md)")
    p.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench"))
    p.add_argument("--name", default=None, help="result file stem (default: train-<sizes>[-limitN|-quick])")
    args = p.parse_args()
    if args.quick:
        args.limit, args.sizes = 64, ["tiny-4m"]
    skipped = skip_missing(args)
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
           "skipped": skipped, "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    md = (f"# {stem} ({doc['date']})\n\nMachine: {machine['cpu']}, {machine['logical_cores']} logical cores, "
          f"load average at start {machine['loadavg_at_start']}, at end {machine['loadavg_at_end']}; "
          f"{args.threads} torch threads; measured fp32 matmul peak {pk['peak_gflops']:.1f} GFLOP/s.\n\n"
          f"{table(results)}\n" + "".join(f"\nSkipped: {t}: {why}\n" for t, why in skipped.items()))  # fmt: skip
    (out_dir / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
