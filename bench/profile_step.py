"""Profile tunelab's training step on the benchmark job: time per step, and a torch.profiler op table.

    python bench/profile_step.py [--size tiny-4m] [--steps 4] [--threads 2] [--compile] [--table]

Builds the preset with LoRA exactly as `train` does (tunelab.models.tuning), packs the alpaca demo like the
benchmark, and runs optimizer steps through tunelab.train.loop.Trainer's pieces (MethodModule + fused
AdamW). Use it to see what a change buys before paying for a full benchmark run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny-4m")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--table", action="store_true", help="print torch.profiler's op table for one step")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from tunelab.config import TrainConfig, TuningConfig
    from tunelab.data.collate import pack
    from tunelab.methods import METHODS
    from tunelab.methods.base import MethodModule
    from tunelab.models.presets import build_preset
    from tunelab.models.tuning import apply_tuning
    from tunelab.train.optim import build_optimizer

    model, tok = build_preset(a.size)
    model = apply_tuning(model, TuningConfig())
    ex = common.encode_file(common.DATA, tok)[: 8 * 3 * (a.steps + 1)]
    rows = pack(ex, 512)
    method = METHODS["sft"]
    module = MethodModule(model, method)
    opt = build_optimizer(module, TrainConfig())
    fwd = torch.compile(module) if a.compile else module
    batches = [method.collate(rows[i : i + 8], tok.pad_token_id) for i in range(0, len(rows) - 7, 8)]

    def step(b: dict) -> None:
        out = fwd(b)
        out["loss_sum"].backward()
        torch.nn.utils.clip_grad_norm_([q for q in module.parameters() if q.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step(batches[0])  # warm-up (and compilation)
    print(f"first step {time.perf_counter() - t0:.2f} s")
    times = []
    for b in batches[1 : a.steps + 1]:
        t0 = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t0)
        ntok = int((b["input_ids"] != tok.pad_token_id).sum())
        print(f"step {times[-1]:.2f} s, {ntok / times[-1]:,.0f} tokens/s")
    if a.table:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batches[-1])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
