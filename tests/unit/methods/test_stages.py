"""`stages:` config: overrides merge over the top level, paths resolve relative to the file, and a bad
stage is reported at load time with its index and name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import load_config, stage_config
from tunelab.errors import ConfigError

CFG = """
model: {name_or_path: tiny}
train: {batch_size: 4, lr: 1.0e-3}
output: {name: two}
stages:
  - name: sft
    data: {train: [{path: sft.jsonl}]}
  - name: dpo
    method: {name: dpo, beta: 0.2}
    data: {train: [{path: pairs.jsonl, format: preference}]}
    train: {lr: 5.0e-4}
"""


def test_stage_configs_merge_and_resolve(tmp_path: Path) -> None:
    (tmp_path / "sft.jsonl").write_text("{}\n")
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    (tmp_path / "c.yaml").write_text(CFG)
    cfg = load_config(tmp_path / "c.yaml")
    first, second = stage_config(cfg, 0), stage_config(cfg, 1, "/models/sft-merged")
    assert first.method.name == "sft" and first.output.name == "two/1-sft" and first.stages == []
    assert first.data.train[0].path == str(tmp_path / "sft.jsonl")
    assert (second.method.name, second.method.beta, second.train.lr, second.train.batch_size) == ("dpo", 0.2, 5e-4, 4)
    assert second.model.name_or_path == "/models/sft-merged" and second.output.name == "two/2-dpo"


def test_bad_stage_fails_at_load_naming_it(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CFG.replace("beta: 0.2", "beta: 0.2, bta: 1"))
    with pytest.raises(ConfigError, match=r"(?s)stages\[1\] \(dpo\).*bta"):
        load_config(tmp_path / "c.yaml")
