"""Every example config shipped with tunelab loads and builds its data pipeline; `tunelab init` copies them."""

from pathlib import Path

import pytest
from tests.conftest import run_cli

from tunelab.api import validate
from tunelab.config import load_config
from tunelab.models.load import load_tokenizer
from tunelab.quickstart import EXAMPLES, init_examples

CONFIGS = sorted(p for p in EXAMPLES.glob("*.yaml"))


def test_there_are_examples_for_lora_full_and_preference():
    names = {p.name for p in CONFIGS}
    assert {"sft-lora.yaml", "full.yaml", "dpo-lora.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(path: Path, tmp_path: Path):
    cfg = load_config(path, [f"data.cache_dir={tmp_path}"])
    if cfg.data.train and all(Path(d.path).exists() for d in cfg.data.train):
        report = validate(cfg)
        assert report["datasets"] and all(d["records"] > 0 for d in report["datasets"])


def test_init_copies_examples_and_writes_a_valid_quickstart(tmp_path: Path):
    out = run_cli("init", str(tmp_path)).stdout
    assert "sft-lora.yaml" in out and (tmp_path / "quickstart.yaml").is_file()
    for name in ("sft-lora.yaml", "full.yaml", "quickstart.yaml"):
        cfg = load_config(tmp_path / name, [f"data.cache_dir={tmp_path / 'cache'}"])
        assert validate(cfg, load_tokenizer(cfg.model))["train_examples"] > 0
    data = {p.name for p in (tmp_path / "data").glob("*.jsonl")}
    assert {"tiny_sft.jsonl", "tiny_pref.jsonl", "train.jsonl", "eval.jsonl", "test.jsonl"} <= data
    proc = run_cli("init", str(tmp_path), check=False)
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr
    assert init_examples(tmp_path, force=True)
