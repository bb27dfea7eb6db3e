"""One benchmark run of one tool, in its own process (so peak RSS belongs to that run alone).

    python bench/worker.py --tool {tunelab,trl,llamafactory} --work DIR --model DIR --out result.json [--threads 2]

Timed region ("fit"): from handing the job to the tool until it returns trained weights: tunelab's
`train(cfg)` (including its own tokenization into a fresh cache and writing final/), TRL's `SFTTrainer(...)`
construction + `.train()` (its dataset arrives pre-tokenized by the shared code; its model is loaded from
the same folder before the clock starts), LLaMA-Factory's whole `run_exp` in its own venv and process
(bench/lf_train.py, which measures itself; its adapter is then loaded here with peft onto the same base model).
Peak RSS is read right after the fit, before the shared eval.
Both run fp32 on CPU, LoRA r16/alpha32/dropout 0 on all linear layers, AdamW lr 2e-4 (betas 0.9/0.999,
eps 1e-8, no weight decay), cosine schedule with 3% warmup, grad-norm clip 1.0, batch 8, one epoch,
no gradient checkpointing (TRL defaults to it on; off is its faster setting and matches tunelab's job).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

J = common.JOB


class Trace:
    """Memory after each optimizer step (step 0: just before the fit), when enabled: [step, RSS, peak RSS,
    malloc heap, heap in use, mmapped] in MB (common.malloc_mb; the last three absent off glibc)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.rows = enabled, []

    def mark(self, step: int) -> None:
        if self.enabled:
            heap = common.malloc_mb() or ()
            self.rows.append([step, round(common.rss_mb()), round(common.peak_rss_mb()), *(round(x) for x in heap)])


def run_tunelab(work: Path, model_dir: Path, threads: int, extra: list[str], seed: int, trace: Trace) -> Any:
    from tunelab.api import Hooks, train
    from tunelab.config import load_config
    from tunelab.models.loader import load_run

    cache = tempfile.mkdtemp(prefix="tl-cache-", dir=work)  # fresh: tokenization is part of the timed fit
    overrides = [
        f"model.name_or_path={model_dir}", "tuning.mode=lora", f"tuning.lora.r={J['r']}",
        f"tuning.lora.alpha={J['alpha']}", "tuning.lora.dropout=0.0", "tuning.lora.target_modules=all-linear",
        f"data.train=[{{path: {work / 'train.json'}, format: alpaca}}]", f"data.max_length={J['max_length']}",
        "data.packing=true", "data.check=null", f"data.cache_dir={cache}",
        f"train.epochs={J['epochs']}", f"train.batch_size={J['batch_size']}", f"train.lr={J['lr']}",
        f"train.warmup_ratio={J['warmup_ratio']}", "train.schedule=cosine", f"train.threads={threads}",
        "train.precision=fp32", "train.log_every=1000000", f"train.seed={seed}",
        "eval.baseline=false", "eval.forgetting.enabled=false", "eval.metrics=[]",
        f"output.dir={work / 'runs'}", "output.overwrite=true", "output.name=tunelab",
        *extra,
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    steps = [0]

    def on_step(step: int) -> None:
        steps[0] = step
        trace.mark(step)

    trace.mark(0)
    start, cpu = time.perf_counter(), time.process_time()
    run_dir = train(cfg, hooks=Hooks(on_step_end=on_step))
    fit = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rss = common.peak_rss_mb()
    model, _ = load_run(run_dir)
    return model, fit, rss, {"fit_cpu_s": cpu, "steps": steps[0]}


def run_trl(work: Path, model_dir: Path, threads: int, examples: list[Any], seed: int, trace: Trace) -> Any:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    data = Dataset.from_dict({
        "input_ids": [e.input_ids for e in examples],
        "completion_mask": [[int(x != -100) for x in e.labels] for e in examples],
    })  # fmt: skip
    args = SFTConfig(
        output_dir=str(work / "trl-out"), per_device_train_batch_size=J["batch_size"],
        num_train_epochs=J["epochs"], learning_rate=J["lr"], lr_scheduler_type="cosine",
        warmup_steps=J["warmup_ratio"], weight_decay=0.0, max_grad_norm=1.0, max_length=J["max_length"],
        completion_only_loss=True, packing=False, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10,
        seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    peft_cfg = LoraConfig(
        r=J["r"], lora_alpha=J["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    import torch

    class StepTrace(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trace.mark(state.global_step)

    torch.set_num_threads(threads)
    trace.mark(0)
    start, cpu = time.perf_counter(), time.process_time()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[StepTrace()])  # fmt: skip
    out = trainer.train()
    fit = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rss = common.peak_rss_mb()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return trainer.model, fit, rss, {"fit_cpu_s": cpu, "trl_train_runtime_s": out.metrics.get("train_runtime"),
                                     "steps": trainer.state.global_step, "trainable_params": trainable}  # fmt: skip


def run_llamafactory(work: Path, model_dir: Path, threads: int, seed: int, lf: argparse.Namespace) -> Any:
    """bench/lf_train.py in LF's own venv (a subprocess that times itself), then its adapter on the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = work / "lf-result.json"
    cmd = [str(lf.lf_python), str(Path(__file__).resolve().parent / "lf_train.py"), "--work", str(work),
           "--model", str(model_dir), "--out", str(out), "--threads", str(threads), "--seed", str(seed),
           "--batch", str(lf.lf_batch), "--packing", lf.lf_packing]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of tunelab's venv in LF's
    env |= {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"lf_train.py failed (exit {proc.returncode})")
    res = json.loads(out.read_text())
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    model = PeftModel.from_pretrained(base, res.pop("adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]  # zero at init: all zero = nothing loaded
    if not lora_b or all(not p.any() for p in lora_b):
        raise SystemExit("LLaMA-Factory's adapter did not load onto the base model (no trained lora_B weights)")
    res["trainable_params_loaded"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    fit, rss = res.pop("fit_s"), res.pop("peak_rss_mb")
    return model, fit, rss, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tool", choices=["tunelab", "trl", "llamafactory"], required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="extra tunelab config overrides (ablations)")
    p.add_argument("--seed", type=int, default=J["seed"], help="training seed (adapter init, data order)")
    p.add_argument("--trace", action="store_true", help="record memory after every optimizer step (Trace)")
    p.add_argument("--lf-python", type=Path, default=None, help="LLaMA-Factory's venv python (--tool llamafactory)")
    p.add_argument("--lf-batch", type=int, default=J["batch_size"], help="LLaMA-Factory's rows per optimizer step")
    p.add_argument("--lf-packing", choices=["neat", "none"], default="neat", help="LLaMA-Factory: neat_packing or not")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(a.model))
    train_ex = common.encode_file(a.work / "train.json", tok)
    eval_ex = common.encode_file(a.work / "eval.json", tok)
    trace = Trace(a.trace)
    if a.tool == "tunelab":
        model, fit, rss, extra = run_tunelab(a.work, a.model, a.threads, a.set, a.seed, trace)
    elif a.tool == "trl":
        model, fit, rss, extra = run_trl(a.work, a.model, a.threads, train_ex, a.seed, trace)
    else:
        model, fit, rss, extra = run_llamafactory(a.work, a.model, a.threads, a.seed, a)
    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    loss = common.eval_loss(model, eval_ex, tok.pad_token_id)
    result = {
        "tool": a.tool,
        "fit_s": fit,
        "peak_rss_mb": rss,
        "eval_loss": loss,
        "eval_s": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "overrides": a.set,
        "seed": a.seed,
        **extra,
        **({"rss_trace": trace.rows} if a.trace else {}),
    }
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
