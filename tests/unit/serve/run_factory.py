"""Run directories as the training engine writes them: RUN/config.yaml + RUN/final (full or LoRA)."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.config import ModelConfig, RunConfig, TuningConfig, dump_config
from tunelab.models.presets import build_preset


def make_run(root: Path, name: str, lora_seed: int | None = None) -> Path:
    """RUN/config.yaml + RUN/final (full tiny model, or a LoRA adapter whose B weights are perturbed)."""
    run = root / name
    model, tok = build_preset("tiny")
    mode = "full"
    if lora_seed is not None:
        from peft import LoraConfig, get_peft_model

        mode = "lora"
        with torch.random.fork_rng(devices=[]):  # lora_A's init: the same files whatever ran before
            torch.manual_seed(lora_seed)
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        gen = torch.Generator().manual_seed(lora_seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:  # fresh LoRA is a no-op (B = 0); training would move B
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    cfg = RunConfig(model=ModelConfig(name_or_path="tiny"), tuning=TuningConfig(mode=mode))
    (run / "config.yaml").write_text(dump_config(cfg))
    return run
