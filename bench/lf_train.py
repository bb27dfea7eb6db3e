"""LLaMA-Factory's LoRA SFT of the training benchmark's job, in LF's bench-only venv (bench/setup_llamafactory.sh),
never tunelab's; started by bench/worker.py (`--tool llamafactory`), which evaluates the adapter it saves.

    python lf_train.py --work DIR --model DIR --out result.json [--threads 1] [--seed 0] [--batch 8] [--packing neat]

What `llamafactory-cli train CONFIG.yaml` runs (`llamafactory.train.tuner.run_exp` with the same arguments): stage
sft, LoRA r16/alpha32/dropout 0 on all linear layers (`lora_target: all`), template chatml (the byte tokenizer's
EOS is <|im_end|>), cutoff_len 512, WORK/train.json read as alpaca through a dataset_info.json, AdamW lr 2e-4,
cosine with 3% warmup, grad-norm clip 1.0, no weight decay, one epoch, fp32, no gradient checkpointing (LF turns
it on unless told), report_to none, no checkpoints. `--packing neat` (default): LF's neat_packing (examples packed
into cutoff_len rows, block-diagonal attention: no attention across examples, like tunelab's packing);
`--packing none`: padded batches of single examples, like TRL's default.

Timed region ("fit"): the whole `run_exp` call: tokenizer, LF's preprocessing into a fresh `datasets` cache,
model load, training, writing the adapter (tunelab's timed `train(cfg)` also tokenizes, loads and writes).
`train_loop_s` is the trainer's loop alone (on_train_begin to on_train_end). The token counts are taken from
LF's own tokenized training set after the clock stops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

JOB = dict(r=16, alpha=32, lr=2e-4, epochs=1, batch_size=8, max_length=512, warmup_ratio=0.03)


def lf_args(a: argparse.Namespace, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The arguments of `llamafactory-cli train` (what its YAML would hold)."""
    return dict(
        stage="sft", do_train=True, model_name_or_path=str(a.model), trust_remote_code=False,
        dataset="bench_train", dataset_dir=str(data_dir), template="chatml", cutoff_len=JOB["max_length"],
        overwrite_cache=True, preprocessing_num_workers=None, neat_packing=a.packing == "neat",
        finetuning_type="lora", lora_rank=JOB["r"], lora_alpha=JOB["alpha"], lora_dropout=0.0, lora_target="all",
        output_dir=str(out_dir), overwrite_output_dir=True, per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1, learning_rate=JOB["lr"], num_train_epochs=JOB["epochs"],
        lr_scheduler_type="cosine", warmup_steps=JOB["warmup_ratio"], weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, disable_gradient_checkpointing=True, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=10, seed=a.seed, data_seed=a.seed, dataloader_num_workers=0,
        disable_tqdm=True, plot_loss=False,
    )  # fmt: skip


def probe() -> Any:
    """A TrainerCallback that keeps the loop's time, steps, the training set and the model's trainable size."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.info: dict[str, Any] = {}
            self.dataset: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw["model"]
            self.dataset = kw["train_dataloader"].dataset
            self.info |= {
                "loop_start": time.perf_counter(),
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "param_dtype": str(next(model.parameters()).dtype),
                "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
                "optim": str(args.optim),
                "max_steps": state.max_steps,
            }

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.info["train_loop_s"] = time.perf_counter() - self.info.pop("loop_start")
            self.info["steps"] = state.global_step
            self.info["train_loss_log"] = [x["loss"] for x in state.log_history if "loss" in x]

    return Probe()


def token_counts(dataset: Any) -> dict[str, int]:
    """Non-padding tokens, loss tokens and rows of LF's tokenized training set (packed rows: padding has mask 0)."""
    tokens = loss = 0
    for mask, labels in zip(dataset["attention_mask"], dataset["labels"], strict=True):
        tokens += sum(1 for x in mask if x != 0)
        loss += sum(1 for x in labels if x != -100)
    return {"tokens": tokens, "loss_tokens": loss, "rows": len(dataset)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="the folder holding train.json")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=JOB["batch_size"], help="rows per optimizer step")
    p.add_argument("--packing", choices=["neat", "none"], default="neat")
    a = p.parse_args()
    run = a.work / "lf-run"
    shutil.rmtree(run, ignore_errors=True)
    data_dir = run / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench_train": {"file_name": str(a.work / "train.json")}}))
    os.environ["HF_DATASETS_CACHE"] = str(run / "hf-cache")  # fresh per run: LF's tokenization is timed too

    import torch
    from llamafactory.train.tuner import run_exp

    torch.set_num_threads(a.threads)
    cb = probe()
    start, cpu = time.perf_counter(), time.process_time()
    run_exp(args=lf_args(a, data_dir, run / "out"), callbacks=[cb])
    fit, cpu = time.perf_counter() - start, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"fit_s": fit, "fit_cpu_s": cpu, "peak_rss_mb": rss, "adapter": str(run / "out"),
              "packing": a.packing, "batch": a.batch, "threads": torch.get_num_threads(), **cb.info,
              "lf_counts": token_counts(cb.dataset)}  # fmt: skip
    a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
