"""Loading a model folder with a new task head: transformers' LOAD REPORT is held back when all it says is that
the new head is new (tunelab says so in one line), and comes through when the checkpoint lacks anything else."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

from tunelab.config import ModelConfig
from tunelab.models.heads import load_head_model
from tunelab.models.presets import build_preset


@pytest.fixture(params=["own handler", "propagated"])
def transformers_logging(request: pytest.FixtureRequest) -> Iterator[None]:
    """transformers' default (its own stderr handler) and an app's (propagated to the root logger's handlers)."""
    if request.param == "own handler":
        yield
        return
    hf_logging.enable_propagation()
    hf_logging.disable_default_handler()
    yield
    hf_logging.disable_propagation()
    hf_logging.enable_default_handler()


def test_a_new_head_alone_is_one_line_and_a_missing_body_weight_shows(
    tmp_path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, transformers_logging: None
) -> None:
    model, _ = build_preset("tiny", seed=0)
    lm = tmp_path / "lm"
    model.save_pretrained(lm)
    said: list[str] = []
    load_head_model(ModelConfig(name_or_path=str(lm)), "seq", ["a", "b"], 0, log=said.append)
    assert "LOAD REPORT" not in capfd.readouterr().err + caplog.text  # wherever the log handlers write
    assert said == [f"new seq-classification head score (2 outputs) on {lm}"]

    broken = tmp_path / "broken"
    shutil.copytree(lm, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(k for k in weights if "down_proj" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, broken / "model.safetensors", {"format": "pt"})
    assert json.loads((broken / "config.json").read_text())["architectures"]
    load_head_model(ModelConfig(name_or_path=str(broken)), "seq", ["a", "b"], 0, log=said.append)
    err = capfd.readouterr().err + caplog.text
    assert "LOAD REPORT" in err and dropped.removeprefix("model.") in err  # a real gap is not hidden
