"""tuning.init_adapter: training continues a saved LoRA adapter (its weights, its rank) instead of a fresh one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pydantic import ValidationError

from tunelab.config import LoraSettings, TuningConfig
from tunelab.errors import TunelabError
from tunelab.models.presets import build_preset
from tunelab.models.tuning import apply_tuning

IDS = torch.tensor([[1, 5, 9, 13, 2]])


def saved_adapter(folder: Path) -> torch.Tensor:
    """A rank-4 adapter with non-zero B (a trained one), saved; returns its logits on IDS."""
    torch.manual_seed(3)
    model = get_peft_model(build_preset("tiny", seed=0)[0], LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    model.save_pretrained(folder)
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_training_starts_from_the_saved_adapter(tmp_path: Path) -> None:
    want = saved_adapter(tmp_path / "a")
    cfg = TuningConfig(mode="lora", lora=LoraSettings(r=16), init_adapter=str(tmp_path / "a"))
    model = apply_tuning(build_preset("tiny", seed=0)[0], cfg)
    with torch.no_grad():
        got = model.eval()(IDS).logits
    assert torch.allclose(got, want, atol=1e-6)  # a fresh adapter (B = 0) would give the base model's logits
    trainable = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, _ in trainable)
    assert all(4 in shape for n, shape in trainable)  # the saved rank 4, not the config's 16


def test_a_run_directory_means_its_final_adapter(tmp_path: Path) -> None:
    want = saved_adapter(tmp_path / "run" / "final")
    model = apply_tuning(build_preset("tiny", seed=0)[0], TuningConfig(init_adapter=str(tmp_path / "run")))
    with torch.no_grad():
        assert torch.allclose(model.eval()(IDS).logits, want, atol=1e-6)


def test_bad_init_adapters_are_named(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="no adapter_config.json"):
        apply_tuning(build_preset("tiny")[0], TuningConfig(init_adapter=str(tmp_path)))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(TunelabError, match="peft_type is 'IA3'"):
        apply_tuning(build_preset("tiny")[0], TuningConfig(init_adapter=str(tmp_path)))
    with pytest.raises(ValidationError, match="tuning.mode full trains none"):
        TuningConfig(mode="full", init_adapter=str(tmp_path))
