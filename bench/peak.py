"""The machine's measured fp32 matmul peak (GFLOP/s) with torch.matmul on a given number of threads.

    python bench/peak.py [--threads 2]

Square fp32 matmuls of a few sizes, each repeated for ~1 s after a warm-up; the best rate is the peak
(2*n^3 FLOPs per n x n matmul). MFU in the training benchmark divides model FLOPs/s by this number, so a
loaded machine lowers both the peak and the training speed.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(threads: int = 2, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 1.0) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        reps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or reps < 3:
            torch.matmul(a, b)
            reps += 1
        rates[n] = 2 * n**3 * reps / elapsed / 1e9
    return {"threads": threads, "peak_gflops": max(rates.values()), "by_size": rates}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    print(json.dumps(measure(p.parse_args().threads), indent=1))


if __name__ == "__main__":
    main()
