"""Load figure for the server: N concurrent clients against a real uvicorn server on 127.0.0.1 (tiny model).

    python bench/serve_load.py [--concurrency 16] [--requests 128] [--max-tokens 32]

Each client sends chat completions back to back with the official `openai` async client (sampled,
temperature 1, seeded); reports requests/s, completion tokens/s, p50/p95 latency, and the batch sizes the
engine actually ran. One tiny model + one LoRA adapter, requests alternate between them. CPU only; the
number depends on the machine and its load, so it is printed with the thread count it ran with.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit" / "serve"))
from run_factory import make_run  # noqa: E402

from tunelab.serve.config import ServeConfig  # noqa: E402
from tunelab.serve.runtime import ServerThread, build_app, build_engine  # noqa: E402


async def client_loop(client: openai.AsyncOpenAI, jobs: list[int], lat: list[float], toks: list[int], n: int) -> None:
    for i in jobs:
        t = time.perf_counter()
        r = await client.chat.completions.create(
            model="lora" if i % 2 else "base",
            messages=[{"role": "user", "content": f"Tell me a story {i}."}],
            max_tokens=n,
            temperature=1.0,
            seed=i,
        )
        lat.append(time.perf_counter() - t)
        toks.append(r.usage.completion_tokens)


async def run(url: str, concurrency: int, total: int, n: int) -> tuple[float, list[float], list[int]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    lat: list[float] = []
    toks: list[int] = []
    jobs = [list(range(total))[c::concurrency] for c in range(concurrency)]
    t = time.perf_counter()
    await asyncio.gather(*(client_loop(client, j, lat, toks, n) for j in jobs))
    return time.perf_counter() - t, lat, toks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    run_dir = make_run(root, "lora", lora_seed=1)
    cfg = ServeConfig.model_validate(
        {
            "limits": {"burst": 100000, "requests_per_minute": 1e6},
            "batch": {"max_batch_size": 32, "wait_ms": 5},
            "threads": args.threads,
        }
    )
    engine = build_engine(run_dir, cfg)
    with ServerThread(build_app(engine, cfg)) as srv:
        asyncio.run(run(srv.url, 2, 4, 4))  # warm-up
        engine.batch_sizes.clear()
        wall, lat, toks = asyncio.run(run(srv.url, args.concurrency, args.requests, args.max_tokens))
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    print(
        f"tiny model + LoRA, CPU, torch threads {torch.get_num_threads()}, concurrency {args.concurrency}, "
        f"{args.requests} requests, max_tokens {args.max_tokens}"
    )
    print(
        f"requests/s {args.requests / wall:.1f}   completion tokens/s {sum(toks) / wall:.0f}   "
        f"p50 {statistics.median(lat) * 1000:.0f} ms   p95 {p95 * 1000:.0f} ms"
    )
    sizes = engine.batch_sizes
    print(f"batches {len(sizes)}, mean batch size {statistics.mean(sizes):.1f}, max {max(sizes)}")


if __name__ == "__main__":
    main()
