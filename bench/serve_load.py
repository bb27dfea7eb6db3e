"""Serving load figures on 127.0.0.1 with the official `openai` async client, tiny model, CPU.

    python bench/serve_load.py [--suite compare,fairness,storm] [--preset tiny] [--quick]

- compare: tunelab serve vs `transformers serve --continuous-batching` (its CPU settings: --device cpu,
  --dtype float32, the default paged attention), the same saved model, each in its own process with one torch
  thread (OMP_NUM_THREADS=1), at concurrency 1/8/32: req/s, completion tok/s, p50/p95 latency, and the
  tunelab / transformers ratio. Chat completions, temperature 0, max_tokens 64, distinct short prompts; each
  level sends at least 8 requests per client (256 at concurrency 32), after a warm-up of as many.
- fairness (issue 15): key `flood` sends 32 long requests at once (~1400-token prompts, max_tokens 512);
  key `alice` sends short requests one after another meanwhile; her p50/p95 against her unloaded figures.
- storm: 70 streamed requests (16 at a time, max_tokens 256) whose clients disconnect after 3 chunks; the
  decode steps the engine ran for them against what running them to the end would cost, stored rows and
  their finish_reason (request logging on, SQLite), and a request afterwards still answered.

Writes bench/results/serve-load.json and .md. Figures depend on the machine and its load: every run
records the CPU count and the load average at start. The servers are bound to 127.0.0.1 only and every
loop here is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1"}  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def save_model(preset: str, folder: Path) -> None:
    from tunelab.models.presets import build_preset

    model, tok = build_preset(preset)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def start(cmd: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env or ENV, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"server did not start in 180 s: see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def tunelab_cmd(model: Path, port: int, cfg: dict[str, Any], tmp: Path) -> list[str]:
    (tmp / "serve.json").write_text(json.dumps({**cfg, "port": port}))
    code = (
        "import json, sys; from tunelab.serve.config import ServeConfig; from tunelab.serve.runtime import serve; "
        f"serve({str(model)!r}, ServeConfig.model_validate(json.load(open({str(tmp / 'serve.json')!r}))))"
    )
    return [sys.executable, "-c", code]


WAVES = 8  # a level sends at least this many requests per client: at c=32, 64 requests were two waves (0.6 s), noise

BASE_CFG = {
    "threads": 1,
    "limits": {"burst": 100000, "requests_per_minute": 1e7, "max_tokens": 1024, "max_prompt_tokens": 3000,
               "max_body_bytes": 1 << 20, "request_timeout_s": 600},
    "batch": {"max_batch_size": 32, "wait_ms": 5},
    "guard": {"injection": "off", "pii_input": "off", "pii_output": "off"},
}  # fmt: skip


async def chat(client: openai.AsyncOpenAI, model: str, text: str, n: int) -> tuple[float, int]:
    t = time.perf_counter()
    r = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=n, temperature=0
    )
    return time.perf_counter() - t, r.usage.completion_tokens if r.usage else 0


def cpu_s(pid: int) -> float:
    """CPU seconds used so far by the server process and its children (all threads)."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


async def load(
    url: str, key: str, model: str, concurrency: int, total: int, n: int, pid: int | None = None
) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600)
    lat: list[float] = []
    toks: list[int] = []

    async def worker(jobs: list[int]) -> None:
        for i in jobs:
            s, k = await chat(client, model, f"Tell me a story about {i}.", n)
            lat.append(s)
            toks.append(k)

    await asyncio.gather(*(worker(list(range(total))[c::concurrency]) for c in range(concurrency)))  # warm-up too
    lat.clear()
    toks.clear()
    t, cpu0 = time.perf_counter(), cpu_s(pid) if pid else 0.0
    await asyncio.gather(*(worker(list(range(total))[c::concurrency]) for c in range(concurrency)))
    wall = time.perf_counter() - t
    cpu = (cpu_s(pid) - cpu0) if pid else float("nan")
    await client.close()
    return {"concurrency": concurrency, "requests": total, "req_s": total / wall, "tok_s": sum(toks) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * pct(lat, 0.95),
            "completion_tokens": sum(toks), "server_cpu_ms_per_req": 1000 * cpu / total}  # fmt: skip


def compare(model: Path, tmp: Path, levels: list[int], total: int, n: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"max_tokens": n, "requests_per_level": total, "levels": {}}
    servers = {
        "tunelab": (tunelab_cmd(model, 8801, BASE_CFG, tmp), "http://127.0.0.1:8801", "base"),
        "transformers": (
            [str(Path(sys.executable).parent / "transformers"), "serve", str(model), "--continuous-batching",
             "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", "8802", "--log-level", "warning"],
            "http://127.0.0.1:8802", str(model),
        ),
    }  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for rnd in range(rounds):  # servers alternate, order flipped each round: the machine's load moves
        for name in sorted(servers, reverse=bool(rnd % 2)):
            cmd, url, model_id = servers[name]
            proc = start(cmd, url, tmp / f"{name}.log")
            try:
                for c in levels:
                    r = asyncio.run(load(url, "none", model_id, c, max(total, WAVES * c), n, proc.pid))
                    runs.setdefault(str(c), {}).setdefault(name, []).append(r)
                    print(f"round {rnd} {name:12s} c={c:2d} {r['req_s']:6.1f} req/s {r['tok_s']:7.0f} tok/s "
                          f"p50 {r['p50_ms']:6.0f} ms p95 {r['p95_ms']:6.0f} ms "
                          f"cpu {r['server_cpu_ms_per_req']:.0f} ms/req", flush=True)  # fmt: skip
            finally:
                stop(proc)
    for c, by_server in runs.items():  # the median round of each figure
        out["levels"][c] = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in by_server.items()
        }
    out["rounds"] = rounds
    for row in out["levels"].values():
        if "tunelab" in row and "transformers" in row:
            row["ratio_req_s"] = row["tunelab"]["req_s"] / row["transformers"]["req_s"]
            row["ratio_cpu_per_req"] = (
                row["transformers"]["server_cpu_ms_per_req"] / row["tunelab"]["server_cpu_ms_per_req"]
            )
    return out


async def fairness_run(url: str, keys: dict[str, str], flood: bool, short: int) -> list[float]:
    long_text = ("The quick brown fox jumps over the lazy dog. " * 32)[:1400]
    fc = openai.AsyncOpenAI(base_url=url + "/v1", api_key=keys["flood"], max_retries=0, timeout=900)
    ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key=keys["alice"], max_retries=0, timeout=900)
    flood_tasks = [asyncio.ensure_future(chat(fc, "base", f"{i} {long_text}", 512)) for i in range(32 if flood else 0)]
    if flood:
        await asyncio.sleep(2.0)  # the flood is admitted and decoding
    lat = []
    for i in range(short):
        s, _ = await chat(ac, "base", f"Hi {i}", 16)
        lat.append(s)
    if flood:
        assert not all(t.done() for t in flood_tasks), "the flood ended before alice's requests: make it longer"
        await asyncio.gather(*flood_tasks)
    await fc.close()
    await ac.close()
    return lat


def fairness(model: Path, tmp: Path, short: int) -> dict[str, Any]:
    from tunelab.serve.security import new_api_key

    keys, lines = {}, []
    for kid in ("flood", "alice"):
        keys[kid], line = new_api_key(kid)
        lines.append(line.replace(" ", ":"))
    env = {**ENV, "TUNELAB_API_KEYS": ",".join(lines)}
    proc = start(tunelab_cmd(model, 8803, BASE_CFG, tmp), "http://127.0.0.1:8803", tmp / "fair.log", env)
    try:
        unloaded = asyncio.run(fairness_run("http://127.0.0.1:8803", keys, False, short))
        loaded = asyncio.run(fairness_run("http://127.0.0.1:8803", keys, True, short))
    finally:
        stop(proc)
    r = {"short_requests": short, "unloaded_p50_ms": 1000 * statistics.median(unloaded),
         "unloaded_p95_ms": 1000 * pct(unloaded, 0.95), "loaded_p50_ms": 1000 * statistics.median(loaded),
         "loaded_p95_ms": 1000 * pct(loaded, 0.95)}  # fmt: skip
    r["p95_ratio"] = r["loaded_p95_ms"] / r["unloaded_p95_ms"]
    print(f"fairness: alice p95 unloaded {r['unloaded_p95_ms']:.0f} ms, under flood {r['loaded_p95_ms']:.0f} ms "
          f"({r['p95_ratio']:.1f}x)", flush=True)  # fmt: skip
    return r


async def storm_client(url: str, i: int, n: int) -> int:
    got = 0
    async with httpx.AsyncClient(timeout=120) as client:
        body = {"model": "base", "messages": [{"role": "user", "content": f"storm {i}"}], "max_tokens": n,
                "temperature": 0, "stream": True}  # fmt: skip
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    got += 1
                    if got >= 3:
                        break  # leaving the `async with` closes the connection mid-stream
    return got


def storm(model: Path, tmp: Path, total: int, n: int) -> dict[str, Any]:
    from tunelab.serve.config import ServeConfig
    from tunelab.serve.runtime import ServerThread, build_app, build_engine

    db = tmp / "storm.db"
    cfg = ServeConfig.model_validate({**BASE_CFG, "store": {"enabled": True, "url": f"sqlite:///{db}"}})
    engine = build_engine(model, cfg)
    with ServerThread(build_app(engine, cfg)) as srv:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> int:
            async with sem:
                return await storm_client(srv.url, i, n)

        async def run() -> list[int]:
            return await asyncio.gather(*(one(i) for i in range(total)))

        t = time.perf_counter()
        chunks = asyncio.run(run())
        deadline = time.monotonic() + 60
        while engine.core.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        idle_s = time.perf_counter() - t
        steps = len(engine.batch_sizes)
        rows_decoded = sum(engine.batch_sizes)
        after = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
            "model": "base", "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4})  # fmt: skip
        time.sleep(1.0)  # request rows are written after the responses
    with sqlite3.connect(db) as con:
        finishes = dict(con.execute("select coalesce(finish_reason, 'NULL'), count(*) from requests group by 1"))
    engine.batcher.close()
    r = {"requests": total, "max_tokens": n, "clients_got_3_chunks": sum(c >= 3 for c in chunks),
         "engine_idle_after_s": idle_s, "engine_busy_at_end": engine.core.busy(), "decode_steps": steps,
         "row_tokens_decoded": rows_decoded, "row_tokens_if_run_to_end": total * n,
         "request_after_storm_status": after.status_code, "stored_rows_by_finish_reason": finishes}  # fmt: skip
    print(f"storm: {r}", flush=True)
    return r


def write(new: dict[str, Any]) -> None:
    """Merge into the results file: a run of one suite keeps the others' latest figures."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "serve-load.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for suite, figures in new.items():
        results[suite] = {**figures, "machine": new["machine"]} if isinstance(figures, dict) else figures
    (OUT / "serve-load.json").write_text(json.dumps(results, indent=2))
    lines = ["# serve load", ""]
    if "compare" in results:
        c = results["compare"]
        lines += [f"## tunelab vs transformers serve --continuous-batching (max_tokens {c['max_tokens']}, greedy)",
                  "", c.get("machine", results.get("machine", "")), "", "| concurrency | server | req/s | tok/s | p50 ms | p95 ms | server CPU ms/req |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for level, row in c["levels"].items():
            for name in ("tunelab", "transformers"):
                if name in row:
                    x = row[name]
                    lines.append(f"| {level} | {name} | {x['req_s']:.1f} | {x['tok_s']:.0f} | {x['p50_ms']:.0f} "
                                 f"| {x['p95_ms']:.0f} | {x['server_cpu_ms_per_req']:.0f} |")  # fmt: skip
            if "ratio_req_s" in row:
                lines.append(f"| {level} | **tunelab / transformers** | **{row['ratio_req_s']:.2f}x** | | | | "
                             f"**{row['ratio_cpu_per_req']:.2f}x less** |")  # fmt: skip
        lines.append("")
    if "fairness" in results:
        f = results["fairness"]
        lines += ["## fairness: 32 long requests from one key, short requests from another", "", f.get("machine", ""), "",
                  f"alice p50/p95 unloaded {f['unloaded_p50_ms']:.0f}/{f['unloaded_p95_ms']:.0f} ms; under the flood "
                  f"{f['loaded_p50_ms']:.0f}/{f['loaded_p95_ms']:.0f} ms; p95 ratio {f['p95_ratio']:.1f}x", ""]  # fmt: skip
    if "storm" in results:
        lines += ["## disconnect storm", "", "```", json.dumps(results["storm"], indent=2), "```", ""]
    (OUT / "serve-load.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="compare,fairness,storm")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument(
        "--requests", type=int, default=64, help="requests per concurrency level (compare; at least 8 per client)"
    )
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="compare: rounds, servers alternating (medians reported)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a tunelab serve setting for every suite, e.g. batch.max_prefill_tokens=2048 (YAML value)")  # fmt: skip
    args = ap.parse_args()
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = BASE_CFG
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    model = tmp / "model"
    save_model(args.preset, model)
    suites = args.suite.split(",")
    settings = f", serve settings {' '.join(args.set)}" if args.set else ""
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
                                          f"preset {args.preset}, 1 torch thread per server{settings}"}  # fmt: skip
    if "compare" in suites:
        levels = [int(x) for x in args.levels.split(",")]
        results["compare"] = compare(model, tmp, levels, args.requests, args.max_tokens, args.rounds)
    if "fairness" in suites:
        results["fairness"] = fairness(model, tmp, short=15)
    if "storm" in suites:
        results["storm"] = storm(model, tmp, total=70, n=256)
    write(results)


if __name__ == "__main__":
    main()
