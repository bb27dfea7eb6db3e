"""Optimizer, learning-rate schedule, precision and CPU threads.

AdamW is fused where torch has a fused kernel for the parameters' device (CUDA, and CPU since torch
2.4); decay skips 1-D tensors (norm weights, biases). Schedules come from transformers' well-tested
helpers. Threads default to the physical cores divided among the processes on this machine, because
hyper-threads and oversubscription both slow dense matmuls down.
"""

from __future__ import annotations

import math
import os

import psutil
import torch
from torch import nn
from transformers import get_scheduler

from tunelab.config import TrainConfig

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise RuntimeError("no trainable parameters")  # tuning modes already reject this; a bug if reached
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cuda", "cpu"} and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):  # noqa: ANN201
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    return get_scheduler(SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def resolve_precision(precision: str) -> str:
    """accelerate's mixed_precision value: bf16 on a capable GPU for auto, fp32 ('no') on CPU."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no"}.get(precision, precision)


def configure_threads(threads: int | None, local_processes: int = 1) -> int:
    n = threads or max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) // max(local_processes, 1))
    torch.set_num_threads(n)
    return n
