"""Exports match their run: merged and GGUF on a tiny LoRA run and on the real stories260k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_factory import make_run
from safetensors.torch import load_file, save_file
from tests.conftest import shared_path

from tunelab.errors import TunelabError
from tunelab.export.exporters import export
from tunelab.export.verify import VerifyError, verify

PROMPTS_CHAT = ["What is the capital of France?", "List three prime numbers.", "Write a haiku."]
PROMPTS_TEXT = ["Once upon a time", "The little dog ran to the park and", "Tom found a big red ball."]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "lora", lora_seed=1)


@pytest.mark.parametrize(("fmt", "qtype"), [("hf", "f16"), ("merged", "f16"), ("gguf", "f16"), ("gguf", "q8_0")])
def test_lora_run_exports_match(lora_run: Path, tmp_path: Path, fmt: str, qtype: str) -> None:
    out = export(lora_run, fmt, tmp_path / "out", qtype=qtype)
    report = verify(out, lora_run, prompts=PROMPTS_CHAT, max_new_tokens=16)
    assert report.passed and report.tokenizer_agreement == 1.0 and report.clear_top1_flips == 0
    assert report.greedy_agreement == 1.0 or qtype == "q8_0"
    if fmt == "merged":
        assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
        assert report.max_abs_logit_diff < 1e-4
    if fmt == "gguf":
        assert report.max_abs_logit_diff < (0.01 if qtype == "f16" else 0.1)


def test_a_tampered_export_fails_loudly(lora_run: Path, tmp_path: Path) -> None:
    out = export(lora_run, "merged", tmp_path / "out")
    weights = load_file(out / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = weights[name] + 0.05 * torch.randn_like(weights[name])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VerifyError, match="max \\|logit diff\\|") as e:
        verify(out, lora_run, prompts=PROMPTS_CHAT, max_new_tokens=8)
    assert e.value.report.max_abs_logit_diff > 1e-3


def test_the_unmerged_lora_is_not_the_base(lora_run: Path, tmp_path: Path) -> None:
    """Negative control: a merged export of the base alone must not pass as the LoRA run."""
    base_run = make_run(tmp_path, "base-only")
    out = export(base_run, "merged", tmp_path / "base-merged")
    with pytest.raises(VerifyError):
        verify(out, lora_run, prompts=PROMPTS_CHAT, max_new_tokens=8)


def test_export_refuses_existing_folder(lora_run: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(TunelabError, match="not empty"):
        export(lora_run, "merged", tmp_path / "out")


@pytest.mark.parametrize(("fmt", "qtype"), [("merged", "f16"), ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q5_0"),
                                           ("gguf", "q4_0")])  # fmt: skip
def test_stories260k_exports_match(tmp_path: Path, fmt: str, qtype: str) -> None:
    """The real (sentencepiece-style, 260K-parameter) model: the calibration of the low-bit tolerances."""
    model = shared_path("models", "stories260k")
    out = export(model, fmt, tmp_path / "out", qtype=qtype)
    report = verify(out, model, prompts=PROMPTS_TEXT, max_new_tokens=16)
    assert report.passed and report.tokenizer_agreement == 1.0
    if qtype in ("f16", "q8_0"):
        assert report.top1_agreement >= (0.99 if qtype == "f16" else 0.97) and report.clear_top1_flips == 0
