"""Shared by the distillation tests: a teacher worth learning from, as a tunelab run directory.

A random tiny preset answers every prompt with the same few bytes and is nearly uniform over its vocabulary;
a teacher trained briefly on the shipped instruction set writes prompt-dependent replies and is confident,
so equalities between teacher paths and "KL goes down" mean something.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.config import DataConfig, DatasetConfig, ModelConfig, RunConfig, TuningConfig, dump_config
from tunelab.data.pipeline import prepare
from tunelab.methods import default_method
from tunelab.models.presets import build_preset

REPO = Path(__file__).resolve().parents[3]
TINY_SFT = REPO / "src" / "tunelab" / "examples" / "data" / "tiny_sft.jsonl"


def trained_teacher_run(root: Path, steps: int = 40, seed: int = 1) -> Path:
    """RUN/config.yaml + RUN/final: the tiny preset (seed `seed`) after `steps` full SFT steps on tiny_sft.jsonl."""
    model, tok = build_preset("tiny", seed=seed)
    cfg = RunConfig(
        model=ModelConfig(name_or_path="tiny", seed=seed),
        tuning=TuningConfig(mode="full"),
        data=DataConfig(train=[DatasetConfig(path=str(TINY_SFT), format="alpaca")], max_length=128, check=None),
    )
    items = prepare(cfg, tok, use_cache=False).train
    sft = default_method("sft")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(items), generator=gen)[:16].tolist()
        batch = sft.collate([items[i] for i in idx], tok.pad_token_id)
        (sft.loss(model, batch).loss_sum / sum(sft.count(items[i]) for i in idx)).backward()
        opt.step()
        opt.zero_grad()
    run = root / "teacher-run"
    model.eval().save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    (run / "config.yaml").write_text(dump_config(cfg))
    return run
