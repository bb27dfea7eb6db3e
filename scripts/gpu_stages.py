"""The stages of scripts/gpu_check.py, each run in its own process by it:

    python scripts/gpu_stages.py STAGE --work DIR --result FILE [--cpu]

A stage writes {"status", "result", "details"} as JSON to FILE and exits 0; a stage that raises exits non-zero and
gpu_check.py reports its last error line. `--cpu` runs the stage's CPU fallback (fp32, gloo, 2 processes where a
GPU run uses 1), so the check's code runs here before it meets a GPU. Models are Llama architectures built from a
config with tunelab's byte tokenizer (no download); data is a synthetic word-reversal task the model can learn.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "red",
    "kite",
    "boat",
    "seven",
    "green",
    "apple",
    "river",
    "stone",
    "cloud",
    "bird",
    "lamp",
    "tree",
    "house",
    "night",
    "sun",
    "moon",
]
# hidden, layers, heads, kv heads, intermediate: GPU sizes (and the CPU fallbacks' tiny ones)
SIZES = {"gpu-100m": (768, 12, 12, 12, 2048), "gpu-350m": (1024, 24, 16, 8, 2816), "gpu-1b": (2048, 16, 16, 8, 5632),
         "cpu-1m": (64, 2, 4, 2, 176), "cpu-4m": (256, 5, 8, 8, 688)}  # fmt: skip
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1}  # dense, from the vendors' sheets


class NotAvailable(Exception):
    """A piece the stage needs is not installed or not possible here: reported, not a failure."""


# ------------------------------------------------------------------ shared pieces


def model_folder(work: Path, size: str) -> Path:
    """A Llama model of `size` with tunelab's byte tokenizer, saved once under work/models (random init)."""
    folder = work / "models" / size
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.presets import preset_tokenizer

    tok = preset_tokenizer("tiny")
    hidden, layers, heads, kv, inter = SIZES[size]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising a 1B model on the CPU alone takes longer than its whole benchmark
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def data_file(work: Path, n: int = 600, long: bool = False) -> Path:
    """Alpaca rows: reverse the words (learnable); `long` rows fill packed 1024-token rows fast."""
    path = work / ("data-long.jsonl" if long else "data.jsonl")
    if not path.is_file():
        rng = random.Random(0)
        with path.open("w") as f:
            for _ in range(n):
                words = rng.choices(WORDS, k=rng.randrange(40, 80) if long else rng.randrange(2, 8))
                row = {"instruction": "Reverse the words.", "input": " ".join(words), "output": " ".join(words[::-1])}
                f.write(json.dumps(row) + "\n")
    return path


def write_config(work: Path, name: str, model: Path, data: Path | None = None, **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "model": {"name_or_path": str(model)},
        "tuning": {"mode": "full", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "data": {"train": [{"path": str(data or data_file(work)), "format": "alpaca"}], "eval_ratio": 0.05,
                 "max_length": 256, "check": None},
        "train": {"max_steps": 30, "batch_size": 16, "lr": 3e-4, "warmup_ratio": 0.1, "log_every": 5,
                  "eval_every": None, "seed": 0},
        "eval": {"baseline": False, "metrics": [], "forgetting": {"enabled": False}},
        "output": {"dir": str(work / "runs"), "name": name, "overwrite": True},
    }  # fmt: skip
    for key, value in over.items():  # "train__batch_size": 8 -> cfg["train"]["batch_size"] = 8
        section, _, field = key.partition("__")
        cfg[section][field] = value
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail))


def launch(
    work: Path, name: str, accel: dict[str, Any], cfg: Path, *args: str, env: dict[str, str] | None = None
) -> None:
    import yaml

    path = work / f"accelerate-{name}.yaml"
    path.write_text(yaml.safe_dump(accel))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "--main_process_port",
           str(29600 + sum(map(ord, name)) % 300), "-m", "tunelab", "train", str(cfg), *args]  # fmt: skip
    run(cmd, work / f"{name}.log", env)


def accelerate_config(example: str, cpu: bool) -> dict[str, Any]:
    import yaml

    conf = yaml.safe_load((REPO / "examples" / "accelerate" / example).read_text())
    return conf | {"num_processes": 2 if cpu else 1, "mixed_precision": "no" if cpu else "bf16"}


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def check_run(run_dir: Path, kind: str, device: str) -> dict[str, Any]:
    """What every training stage verifies: the loss fell, environment.json names the setup, final/ loads."""
    from transformers import AutoModelForCausalLM

    setup = json.loads((run_dir / "environment.json").read_text())["distributed"]
    if setup["type"] != kind or setup["device"] != device:
        raise RuntimeError(f"environment.json says {setup['type']} on {setup['device']}, expected {kind} on {device}")
    ls = losses(run_dir)
    if not ls[-1] < ls[0]:
        raise RuntimeError(f"the loss did not fall: {ls}")
    final = run_dir / "final"
    if not (final / "adapter_config.json").is_file():
        AutoModelForCausalLM.from_pretrained(final)  # a plain HF folder
    return {"loss_first": round(ls[0], 4), "loss_last": round(ls[-1], 4), "setup": setup}


# ------------------------------------------------------------------ stages


def stage_env(work: Path, cpu: bool) -> dict[str, Any]:
    import torch

    found = {m: importlib.util.find_spec(m) is not None for m in
             ("pydantic", "bitsandbytes", "deepspeed", "vllm", "flash_attn", "trl", "datasets")}  # fmt: skip
    from importlib import metadata

    versions = {}
    for lib in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic", "deepspeed",
                "bitsandbytes", "vllm", "flash-attn"):  # fmt: skip
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    gpu = torch.cuda.is_available()
    if not gpu and not cpu:
        raise RuntimeError("torch.cuda.is_available() is False (use --cpu for the CPU fallbacks)")
    details: dict[str, Any] = {"python": sys.version.split()[0], "torch_cuda": torch.version.cuda, "versions": versions,
                               "importable": found}  # fmt: skip
    if gpu:
        props = torch.cuda.get_device_properties(0)
        details |= {"gpu": props.name, "memory_gb": round(props.total_memory / 2**30, 1), "capability":
                    f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported(),
                    "count": torch.cuda.device_count()}  # fmt: skip
    import tunelab.api  # noqa: F401  (everything tunelab train imports is there)

    where = f"{details.get('gpu')} {details.get('memory_gb')} GB, CUDA {torch.version.cuda}" if gpu else "CPU"
    missing = ", ".join(k for k, v in found.items() if not v) or "none"
    return {"result": f"{where}; torch {torch.__version__}; not installed: {missing}", "details": details}


def stage_bf16(work: Path, cpu: bool) -> dict[str, Any]:
    """Full tuning on one GPU in bf16 through the CLI (precision auto must pick bf16)."""
    model = model_folder(work, "cpu-1m" if cpu else "gpu-100m")
    over = {"train__max_steps": 8, "train__batch_size": 4} if cpu else {}
    cfg = write_config(work, "bf16", model, **over)
    t0 = time.perf_counter()
    run([sys.executable, "-m", "tunelab", "train", str(cfg)], work / "bf16.log")
    run_dir = work / "runs" / "bf16"
    res = check_run(run_dir, "NO", "cpu" if cpu else "cuda")
    if not cpu and res["setup"]["mixed_precision"] != "bf16":
        raise RuntimeError(f"precision auto gave {res['setup']['mixed_precision']} on the GPU, not bf16")
    tok_s = [json.loads(x).get("tokens_per_s") for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    res["tokens_per_s"] = round(max(t for t in tok_s if t), 0)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    text = f"loss {res['loss_first']} -> {res['loss_last']}, {res['setup']['mixed_precision']}, {res['tokens_per_s']:,.0f} tok/s"
    return {"result": text, "details": res}


def stage_attention(work: Path, cpu: bool) -> dict[str, Any]:
    """SDPA's kernels (flash, memory-efficient, math) against eager attention on the same weights and input."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM

    dev, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_folder(work, "cpu-1m" if cpu else "gpu-100m"), dtype=dtype,
                                                 attn_implementation="eager").to(dev).eval()  # fmt: skip
    x = torch.randint(4, 250, (2, 128) if cpu else (4, 2048), device=dev)

    def timed(n: int = 5) -> tuple[Any, float]:
        with torch.no_grad():
            out = model(input_ids=x).logits.float()
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                model(input_ids=x)
            if dev == "cuda":
                torch.cuda.synchronize()
        return out, (time.perf_counter() - t0) / n * 1000

    ref, eager_ms = timed()
    rows = {"eager": {"ms": round(eager_ms, 2)}}
    model.set_attn_implementation("sdpa")
    backends = [("math", SDPBackend.MATH)] if cpu else [("flash", SDPBackend.FLASH_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)]  # fmt: skip
    for name, backend in backends:
        try:
            with sdpa_kernel([backend]):
                out, ms = timed()
            rows[f"sdpa-{name}"] = {
                "ms": round(ms, 2),
                "max_rel_diff": float((out - ref).abs().max() / ref.abs().max()),
            }
        except RuntimeError as e:  # a kernel this GPU / dtype / shape cannot use
            rows[f"sdpa-{name}"] = {"error": str(e).splitlines()[0][:120]}
    if importlib.util.find_spec("flash_attn") is None:
        rows["flash_attention_2"] = {"error": "not installed"}
    else:
        model.set_attn_implementation("flash_attention_2")
        out, ms = timed()
        rows["flash_attention_2"] = {
            "ms": round(ms, 2),
            "max_rel_diff": float((out - ref).abs().max() / ref.abs().max()),
        }
    bad = [k for k, v in rows.items() if v.get("max_rel_diff", 0) > (1e-4 if cpu else 0.05)]
    if bad:
        raise RuntimeError(f"attention differs from eager: {bad}: {rows}")
    if not cpu and "error" in rows["sdpa-flash"]:
        raise RuntimeError(f"SDPA's flash kernel did not run: {rows['sdpa-flash']['error']}")
    text = "; ".join(f"{k} {v['ms']} ms" + (f" (rel diff {v['max_rel_diff']:.1e})" if "max_rel_diff" in v else "")
                     if "ms" in v else f"{k}: {v['error']}" for k, v in rows.items())  # fmt: skip
    return {"result": text, "details": {"shape": list(x.shape), "dtype": str(dtype), "kernels": rows}}


def stage_qlora(work: Path, cpu: bool) -> dict[str, Any]:
    import torch

    if cpu or not torch.cuda.is_available():
        raise NotAvailable("needs CUDA (bitsandbytes 4-bit kernels)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise NotAvailable("bitsandbytes is not installed (its wheel did not travel in .whl/)")
    cfg = write_config(work, "qlora", model_folder(work, "gpu-100m"), tuning__mode="qlora", train__lr=1e-3)
    run([sys.executable, "-m", "tunelab", "train", str(cfg)], work / "qlora.log")
    res = check_run(work / "runs" / "qlora", "NO", "cuda")
    import bitsandbytes

    return {"result": f"bitsandbytes {bitsandbytes.__version__}: loss {res['loss_first']} -> {res['loss_last']}, "
                      "adapter in final/", "details": res}  # fmt: skip


def stage_fsdp(work: Path, cpu: bool) -> dict[str, Any]:
    """examples/accelerate/fsdp.yaml: 1 GPU (nccl) or 2 CPU processes (gloo); sharded checkpoint, then --resume."""
    model = model_folder(work, "cpu-1m" if cpu else "gpu-100m")
    over = {"train__max_steps": 6, "train__batch_size": 4} if cpu else {}
    cfg = write_config(work, "fsdp", model, train__save_every=3 if cpu else 15, **over)
    accel = accelerate_config("fsdp.yaml", cpu)
    launch(work, "fsdp", accel, cfg)
    run_dir = work / "runs" / "fsdp"
    res = check_run(run_dir, "FSDP", "cpu" if cpu else "cuda")
    shards = sorted((run_dir / "checkpoints").glob("step-*/pytorch_model_fsdp_0"))
    if not shards:
        raise RuntimeError("no sharded checkpoint (pytorch_model_fsdp_0/) was written")
    s = res["setup"]
    text = (f"{s['sharding']['strategy']} on {s['world_size']} ({s['backend']}), {s['mixed_precision']}: full loss "
            f"{res['loss_first']} -> {res['loss_last']}, sharded checkpoints")  # fmt: skip
    try:  # LoRA over a base kept in the checkpoint's dtype (bf16 on the GPU): its own part of the result
        cfg = write_config(work, "fsdp-lora", model, tuning__mode="lora", train__lr=1e-3, **over)
        launch(work, "fsdp-lora", accel, cfg)
        lora = check_run(work / "runs" / "fsdp-lora", "FSDP", "cpu" if cpu else "cuda")
    except Exception as e:
        return {"status": "FAILED", "result": f"{text}; LoRA FAILED: {e}"[:600], "details": {"full": res}}
    text += f"; LoRA loss {lora['loss_first']} -> {lora['loss_last']}"
    return {"result": text, "details": {"full": res, "lora": lora}}


def stage_deepspeed(work: Path, cpu: bool) -> dict[str, Any]:
    if importlib.util.find_spec("deepspeed") is None:
        raise NotAvailable("deepspeed is not installed (its wheel did not travel in .whl/)")
    model = model_folder(work, "cpu-1m" if cpu else "gpu-100m")
    over = {"train__max_steps": 6, "train__batch_size": 4} if cpu else {}
    env = {}
    if cpu and (REPO / ".deps" / "torch_extensions").is_dir():  # the CPU op compiled by the tests (minutes afresh)
        env["TORCH_EXTENSIONS_DIR"] = str(REPO / ".deps" / "torch_extensions")
    out, text = {}, []
    for stage in (2, 3):
        name = f"zero{stage}"
        cfg = write_config(work, name, model, train__save_every=3 if cpu else 15, **over)
        launch(work, name, accelerate_config(f"deepspeed_zero{stage}.yaml", cpu), cfg, env=env)
        out[name] = check_run(work / "runs" / name, "DEEPSPEED", "cpu" if cpu else "cuda")
        text.append(f"ZeRO-{stage} loss {out[name]['loss_first']} -> {out[name]['loss_last']}")
    import deepspeed

    return {"result": f"deepspeed {deepspeed.__version__}: " + "; ".join(text), "details": out}


def stage_vllm(work: Path, cpu: bool) -> dict[str, Any]:
    if cpu:
        raise NotAvailable("needs CUDA")
    if importlib.util.find_spec("vllm") is None:
        raise NotAvailable("vllm is not installed (too large to travel as a wheel)")
    final = work / "runs" / "bf16" / "final"
    if not final.is_dir():
        raise RuntimeError("needs the bf16 stage's final/ (run it first)")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(final), dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=True)
    prompts = ["Reverse the words: red kite", "Reverse the words: seven green apple"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=16, temperature=0.0))
    texts = [o.outputs[0].text for o in outs]
    return {"result": f"generated {len(texts)} completions: {texts[0][:40]!r}", "details": {"texts": texts}}


def stage_bench(work: Path, cpu: bool) -> dict[str, Any]:
    """Training throughput at GPU sizes (packed 1024-token rows, bf16): tokens/s, peak memory, MFU."""
    import torch

    from tunelab.api import train
    from tunelab.config import load_config

    sizes = ["cpu-4m"] if cpu else ["gpu-350m", "gpu-1b"]
    peak = None if cpu else matmul_peak_tflops()
    rows = []
    for size in sizes:
        folder = model_folder(work, size)
        n_params = sum(p.numel() for p in _meta_model(folder).parameters())
        for mode in ("full", "lora"):
            name = f"bench-{size}-{mode}"
            over = dict(train__max_steps=4 if cpu else 15, train__batch_size=2 if cpu else 8, train__log_every=2 if cpu else 5,
                        data__max_length=256 if cpu else 1024, data__packing=True, data__eval_ratio=0,
                        tuning__mode=mode, train__lr=1e-4)  # fmt: skip
            cfg = write_config(work, name, folder, data=data_file(work, 1200, long=True), **over)
            gc.collect()
            if not cpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            run_dir = train(load_config(cfg))
            recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            windows = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r][1:] or [recs[-1]["tokens_per_s"]]
            tok_s = sorted(windows)[len(windows) // 2]  # the median window after the first (warm-up) one
            row = {"size": size, "params_m": round(n_params / 1e6, 1), "mode": mode, "tokens_per_s": round(tok_s),
                   "peak_mem_gb": None if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 1)}  # fmt: skip
            if peak:
                layers, hidden = SIZES[size][1], SIZES[size][0]
                flops = (6 if mode == "full" else 4) * n_params + 12 * layers * hidden * 1024  # per token, + attention
                row |= {"mfu_measured_peak": round(flops * tok_s / (peak["measured"] * 1e12), 3),
                        "mfu_nominal_peak": round(flops * tok_s / (peak["nominal"] * 1e12), 3) if peak["nominal"] else None}  # fmt: skip
            rows.append(row)
    text = "; ".join(f"{r['size']} {r['mode']} {r['tokens_per_s']:,} tok/s" for r in rows)
    return {"result": text, "details": {"rows": rows, "peak_tflops": peak}}


def _meta_model(folder: Path) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))


def matmul_peak_tflops() -> dict[str, Any]:
    """The bf16 matmul rate this GPU reaches here (8192^3, best of 10), and the vendor's dense peak if known."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    name = torch.cuda.get_device_name(0)
    nominal = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return {"measured": round(2 * 8192**3 / best / 1e12, 1), "nominal": nominal, "gpu": name}


def stage__fail(work: Path, cpu: bool) -> dict[str, Any]:
    """Self-test of the check: a stage that fails."""
    raise RuntimeError("this stage fails on purpose")


def stage__hang(work: Path, cpu: bool) -> dict[str, Any]:
    """Self-test of the check: a stage that outlives its time limit."""
    time.sleep(3600)
    return {}


STAGES = {name.removeprefix("stage_"): fn for name, fn in globals().items() if name.startswith("stage_")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        out = {"status": "ok"} | STAGES[args.stage](args.work, args.cpu)
    except NotAvailable as e:
        out = {"status": "not available", "result": str(e), "details": {}}
    args.result.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
