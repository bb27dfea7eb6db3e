"""Batched generation speed on the ~30M preset: tunelab.models.generate at batch 1, 8 and 32 against plain
`model.generate` called once per prompt. Writes bench/results/generate.{json,md}.

    python bench/generate.py [--size tiny-30m] [--prompts 32] [--max-new-tokens 64] [--threads 1]

Prompts are the first N alpaca demo instructions in the ChatML template (the same token ids for both
paths: tunelab.models.generate.encode_prompt); decoding is greedy with the KV cache. Tokens counted = new
tokens up to and including EOS (or max_new_tokens), from the returned ids, the same way for both. A
batch keeps generating until its longest row ends, so work spent on rows already finished counts as
time but not as tokens: that is the real cost of batching. The model is the untrained preset (speed
does not depend on the weights' values; outputs are compared between the two paths as a sanity check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny-30m")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from tunelab.models.generate import DecodingConfig, encode_prompt, generate_ids
    from tunelab.models.presets import build_preset

    machine = common.machine()
    model, tok = build_preset(a.size)
    model.eval()
    rows = json.loads(common.DATA.read_text())[: a.prompts]
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in rows]
    eos = tok.eos_token_id

    def ntok(ids: list[list[int]]) -> int:
        return sum(min(len(r) + 1, a.max_new_tokens) for r in ids)  # + the EOS that ended the row, if any

    # plain transformers, one prompt at a time
    start = time.perf_counter()
    plain = []
    with torch.inference_mode():
        for pr in prompts:
            ids = torch.tensor([encode_prompt(tok, pr)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]  # fmt: skip
            row = out.tolist()
            plain.append(row[: row.index(eos)] if eos in row else row)
    secs = time.perf_counter() - start
    results = [{"path": "model.generate, one prompt at a time", "batch": 1, "seconds": secs,
                "tokens": ntok(plain), "tokens_per_s": ntok(plain) / secs, "same_as_plain": 1.0}]  # fmt: skip
    print(results[-1], flush=True)
    for bs in a.batches:
        dec = DecodingConfig(max_new_tokens=a.max_new_tokens, batch_size=bs)
        start = time.perf_counter()
        got = generate_ids(model, tok, prompts, dec, progress=False)
        secs = time.perf_counter() - start
        same = sum(g == q for g, q in zip(got, plain)) / len(plain)
        results.append({"path": "tunelab.models.generate", "batch": bs, "seconds": secs, "tokens": ntok(got),
                        "tokens_per_s": ntok(got) / secs, "same_as_plain": same})  # fmt: skip
        print(results[-1], flush=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {"machine": machine, "size": a.size, "params": model.num_parameters(), "prompts": a.prompts,
           "max_new_tokens": a.max_new_tokens, "threads": a.threads, "results": results,
           "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "generate.json").write_text(json.dumps(doc, indent=1))
    base = results[0]["tokens_per_s"]
    lines = [f"# generation speed, {a.size} ({doc['date']})", "",
             f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, load average at start "
             f"{machine['loadavg_at_start']}, at end {machine['loadavg_at_end']}; {a.threads} torch thread(s); "
             f"{a.prompts} prompts, greedy, up to {a.max_new_tokens} new tokens.", "",
             "| path | batch | seconds | new tokens | tokens/s | vs plain | outputs equal to plain |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['path']} | {r['batch']} | {r['seconds']:.1f} | {r['tokens']} | {r['tokens_per_s']:,.0f} "
                     f"| {r['tokens_per_s'] / base:.2f}x | {r['same_as_plain']:.0%} |")  # fmt: skip
    (out_dir / "generate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
