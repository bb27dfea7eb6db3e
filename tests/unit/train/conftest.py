"""Helpers for training tests: a tiny alpaca dataset written per test, configs over the tiny preset."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import RunConfig, load_config
from tunelab.models.presets import build_preset

WORDS = ["red", "kite", "boat", "seven", "green", "apple", "river", "stone", "cloud", "bird", "lamp", "tree"]


def write_alpaca(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            words = rng.sample(WORDS, rng.randrange(1, 5))
            row = {"instruction": "Reverse the words.", "input": " ".join(words), "output": " ".join(reversed(words))}
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def make_cfg(tmp_path: Path):  # noqa: ANN201
    data = write_alpaca(tmp_path / "train.jsonl")

    def make(*overrides: str) -> RunConfig:
        base = [
            f"data.train=[{{path: {data}, format: alpaca}}]",
            f"output.dir={tmp_path / 'runs'}",
            "data.max_length=64",
            "train.batch_size=4",
            "train.lr=1e-2",
            "train.log_every=1",
            "train.max_steps=4",
            "tuning.lora.r=4",
            "train.threads=1",  # tiny models: one thread is fastest, and the test CPU is shared
        ]
        return load_config(None, [*base, *overrides])

    return make


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """The tiny preset as a model folder (tied embeddings, like small real models)."""
    model, tokenizer = build_preset("tiny")
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(final / name))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
