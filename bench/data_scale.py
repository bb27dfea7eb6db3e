"""The data path and the data check at scale: tunelab beside LLaMA-Factory's preprocessing and a `datasets.map`
floor, on generated alpaca data (10k / 100k / 1M records), per size and tool: CPU s, wall s, peak RSS.

    python bench/data_scale.py --sizes 10000 100000            # what `make bench-data` runs
    python bench/data_scale.py --sizes 1000000 --tools tunelab-cold tunelab-warm check --name data-scale-1m
    python bench/data_scale.py --merge data-scale-1m     # the long one, made once, merged into data-scale

Each tool runs in its own process, started by this script; CPU is user + system time of that process and its
children (worker processes included), peak RSS the largest resident set of any one of them (`wait4`), wall the
elapsed time. The machine is shared: CPU seconds move less with other jobs' load than wall seconds. Results are
merged into bench/results/data-scale.json (one entry per size and tool, newest wins) and written as .md.

Tools:
- `tunelab-cold`: `tunelab validate` on a fresh cache (read, encode, split, write the memory-mapped cache).
- `tunelab-warm`: the same command again: the cache is mapped, no record parsed.
- `tunelab-np2`: cold with data.num_proc=2.
- `llamafactory`: LLaMA-Factory 0.9.5's `get_dataset` (bench/lf_preprocess.py) in the bench-only venv of
  bench/setup_llamafactory.sh (skipped with a note when that venv is missing).
- `floor`: `datasets.load_dataset("json")` + a batched `map` that tokenizes instruction/input/output joined
  (bench/data_floor.py): the least any tokenizing preprocessor does.
- `check`, `check-w2`: `tunelab data check FILE --json` (all checks, near-duplicates included), 1 and 2 workers.

The generated file: alpaca rows of pseudo-words (instruction 6-20 words, input empty half of the time, output
20-250 words, about 900 bytes a row), 2% exact copies and 5% near copies (one word in 40 changed) of earlier rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "data-scale"
RESULTS = HERE / "results"
LF_PYTHON = HERE / ".work" / "llamafactory-venv" / "bin" / "python"
TOOLS = ("tunelab-cold", "tunelab-warm", "tunelab-np2", "llamafactory", "floor", "check", "check-w2")


def words(rng: random.Random, n: int) -> str:
    return " ".join(VOCAB[rng.randrange(len(VOCAB))] for _ in range(n))


def _vocab(size: int = 3000) -> list[str]:
    rng = random.Random(1)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    return ["".join(rng.choice(letters[: 8 + k % 18]) for _ in range(2 + k % 9)) for k in range(size)]


VOCAB = _vocab()


def generate(n: int, path: Path, seed: int = 0) -> Path:
    """n alpaca rows (see the module docstring), written once per size."""
    if path.is_file():
        return path
    rng, rows = random.Random(seed), []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for i in range(n):
            u = rng.random()
            if rows and u < 0.02:
                row = dict(rng.choice(rows))
            elif rows and u < 0.07:
                base = rng.choice(rows)
                out = base["output"].split(" ")
                for k in rng.sample(range(len(out)), max(1, len(out) // 40)):
                    out[k] = VOCAB[rng.randrange(len(VOCAB))]
                row = {**base, "output": " ".join(out)}
            else:
                row = {"instruction": words(rng, rng.randint(6, 20)).capitalize() + "?",
                       "input": words(rng, rng.randint(5, 30)) if rng.random() < 0.5 else "",
                       "output": words(rng, rng.randint(20, 250)).capitalize() + "."}  # fmt: skip
            if i < 2000:  # copies come from a window of early rows: bounded memory while generating
                rows.append(row)
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path


def model_dir() -> Path:
    """The tiny-4m preset's byte tokenizer (and model) as a normal folder: what LLaMA-Factory and the floor load."""
    folder = HERE / ".work" / "model-tiny-4m"
    if not (folder / "tokenizer.json").is_file():
        sys.path[:0] = [str(ROOT / "src"), str(HERE)]
        from common import save_model

        save_model("tiny-4m", folder)
    return folder


def tunelab_config(data: Path, cache: Path, num_proc: int = 1) -> Path:
    cfg = WORK / f"{data.stem}-np{num_proc}.yaml"
    cfg.write_text(
        f"model: {{name_or_path: tiny-4m}}\ndata:\n  train: [{{path: {data}}}]\n  max_length: 512\n"
        f"  cache_dir: {cache}\n  num_proc: {num_proc}\n"
    )
    return cfg


def command(tool: str, data: Path, n: int) -> list[str] | None:
    py = str(ROOT / ".venv" / "bin" / "python")
    cache = WORK / f"cache-{n}"
    if tool in ("tunelab-cold", "tunelab-warm"):
        if tool == "tunelab-cold":
            shutil.rmtree(cache, ignore_errors=True)
        return [py, "-m", "tunelab", "validate", str(tunelab_config(data, cache)), "--json"]
    if tool == "tunelab-np2":
        shutil.rmtree(WORK / f"cache-np2-{n}", ignore_errors=True)
        return [py, "-m", "tunelab", "validate", str(tunelab_config(data, WORK / f"cache-np2-{n}", 2)), "--json"]  # fmt: skip
    if tool == "llamafactory":  # a fresh datasets cache: the JSON -> Arrow conversion is part of its work
        if not LF_PYTHON.is_file():
            return None
        shutil.rmtree(WORK / f"lf-{n}", ignore_errors=True)
        return [str(LF_PYTHON), str(HERE / "lf_preprocess.py"), str(data), str(model_dir()), str(WORK / f"lf-{n}")]
    if tool == "floor":
        shutil.rmtree(WORK / f"floor-{n}", ignore_errors=True)
        return [py, str(HERE / "data_floor.py"), str(data), str(model_dir()), str(WORK / f"floor-{n}")]
    if tool in ("check", "check-w2"):
        return [py, "-m", "tunelab", "data", "check", str(data), "--json", "--workers", "2" if tool == "check-w2" else "1"]  # fmt: skip
    raise ValueError(tool)


def measure(cmd: list[str]) -> dict[str, Any]:
    """CPU (user + system, children included), wall and peak RSS of one command; call it in a fresh process
    (`measure_isolated`), where the children's resource usage is this command's alone."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    if "lf_preprocess.py" in " ".join(cmd):  # its own datasets cache, removed with its work folder before the run
        env["HF_DATASETS_CACHE"] = str(Path(cmd[-1]) / "hf-cache")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = proc.returncode in (0, 1)  # data check exits 1 when it finds errors (it finds none in generated data)
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "ok": ok,
            "tail": proc.stderr.decode(errors="replace")[-400:] if not ok else ""}  # fmt: skip


def run(sizes: list[int], tools: list[str], name: str = "data-scale") -> dict[str, Any]:
    results_path = RESULTS / f"{name}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    for n in sizes:
        data = generate(n, WORK / f"alpaca-{n}.jsonl")
        for tool in tools:
            cmd = command(tool, data, n)
            if cmd is None:
                print(f"{n} {tool}: skipped (run bench/setup_llamafactory.sh)", flush=True)
                continue
            r = measure_isolated(cmd) | {"records": n, "load": round(os.getloadavg()[0], 2)}
            results["runs"][f"{n}/{tool}"] = r
            print(f"{n} {tool}: {r}", flush=True)
            RESULTS.mkdir(exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1) + "\n")
    results["machine"] = machine()
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(results))
    return results


def merge(names: list[str], into: str = "data-scale") -> None:
    """Runs recorded under other names (a long run made beside a short one) merged into `into` (.json and .md)."""
    target = RESULTS / f"{into}.json"
    results = json.loads(target.read_text()) if target.is_file() else {"runs": {}}
    for name in names:
        other = json.loads((RESULTS / f"{name}.json").read_text())
        results["runs"].update(other["runs"])
        results.setdefault("machine", other.get("machine"))
    target.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{into}.md").write_text(markdown(results))


def measure_isolated(cmd: list[str]) -> dict[str, Any]:
    """`measure` in a fresh process, so RUSAGE_CHILDREN (the fallback) holds this one command only."""
    code = f"import json,sys; sys.path.insert(0, {str(HERE)!r}); import data_scale; print(json.dumps(data_scale.measure({cmd!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    sizes = sorted({int(k.split("/")[0]) for k in runs})
    lines = ["# Data path and data check at scale (bench/data_scale.py)", "",
             "CPU s = user + system of the tool's processes; peak RSS = the largest process; load = 1-min load "
             "average when the run ended (2 shared cores).", "",
             "| records | tool | CPU s | wall s | peak RSS MB | CPU ms/record | load |", "|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for n in sizes:
        for tool in TOOLS:
            r = runs.get(f"{n}/{tool}")
            if r:
                lines.append(f"| {n:,} | {tool} | {r['cpu_s']} | {r['wall_s']} | {r['peak_rss_mb']} | "
                             f"{1000 * r['cpu_s'] / n:.3f} | {r.get('load', '')} |")  # fmt: skip
    lines += ["", "Marginal CPU per record (the slope between the two largest sizes, start-up cost removed):", ""]
    if len(sizes) >= 2:
        a, b = sizes[-2], sizes[-1]
        for tool in TOOLS:
            ra, rb = runs.get(f"{a}/{tool}"), runs.get(f"{b}/{tool}")
            if ra and rb:
                lines.append(f"- {tool}: {1000 * (rb['cpu_s'] - ra['cpu_s']) / (b - a):.3f} ms/record ({a:,} -> {b:,})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--name", default="data-scale", help="Results file name (bench/results/NAME.json and .md).")
    ap.add_argument("--merge", nargs="+", default=[], help="Merge these results files into --name and stop.")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.name)
        return
    run(args.sizes, args.tools, args.name)


if __name__ == "__main__":
    main()
