"""Config values that used to get through: non-finite and absurd numbers, duplicate keys, non-UTF-8 files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.serve.config import load_serve_config
from tunelab.yamlio import safe_load


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error(path: Path | None, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value)


def test_non_finite_numbers_are_refused_with_file_line_and_key(tmp_path: Path) -> None:
    # `1e400` is a string to YAML 1.1 that pydantic turned into inf; `.inf` and `.nan` are YAML floats
    p = write(tmp_path, "train:\n  lr: .inf\n  epochs: 1e400\ndata:\n  check:\n    near_threshold: .nan\n")
    msg = error(p)
    assert f"{p}:2: train.lr: Input should be a finite number (got inf)" in msg
    assert f"{p}:3: train.epochs: Input should be a finite number (got '1e400')" in msg
    assert f"{p}:6: data.check.near_threshold: Input should be a finite number" in msg
    assert "finite number" in error(None, "eval.judge.timeout=-.inf")  # every section, also through overrides


@pytest.mark.parametrize(
    "override, key",
    [("train.lr=3", "train.lr"), ("train.epochs=1e9", "train.epochs"), ("data.max_length=100000000", "data.max_length"),
     ("train.max_steps=10000000000000", "train.max_steps"), ("eval.max_new_tokens=99999999", "eval.max_new_tokens")],
)  # fmt: skip
def test_absurd_values_are_refused(override: str, key: str) -> None:
    assert f"{key}: Input should be less than or equal to" in error(None, override)


def test_sensible_values_still_load() -> None:
    cfg = load_config(None, ["train.lr=1.0", "train.epochs=300", "data.max_length=131072"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.max_length) == (1.0, 300, 131072)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "train:\n  lr: 0.001\n  epochs: 2\n  lr: 0.1\n")
    assert error(p) == f"{p}:4: duplicate key 'lr' (first at line 2, again at line 4); give it once"
    nested = write(tmp_path, "data:\n  train:\n    - path: a.jsonl\n      format: alpaca\n      path: b.jsonl\n")
    assert "duplicate key 'path' (first at line 3, again at line 5)" in error(nested)
    assert "duplicate key 'path'" in error(None, "data.train=[{path: a.jsonl, path: b.jsonl}]")


def test_merge_keys_may_still_be_overridden() -> None:
    assert safe_load("base: &b {lr: 1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 3\n")["train"] == {"lr": 3, "epochs": 2}


def test_serve_config_refuses_duplicates_and_infinities(tmp_path: Path) -> None:
    p = write(tmp_path, "port: 8000\nlimits:\n  burst: 5\n  burst: 50\n", "serve.yaml")
    with pytest.raises(ConfigError, match=r"serve.yaml:4: duplicate key 'burst' \(first at line 3"):
        load_serve_config(p)
    p = write(tmp_path, "limits:\n  request_timeout_s: .inf\n", "serve2.yaml")
    with pytest.raises(ConfigError, match=r"serve2.yaml:2: limits.request_timeout_s: Input should be a finite"):
        load_serve_config(p)


def test_config_that_is_not_utf8_names_line_and_byte(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    raw = "model:\n  name_or_path: tiny\noutput:\n  name: café\n".encode("latin-1")
    p.write_bytes(raw)
    assert error(p).startswith(f"{p}, line 4: not UTF-8 text: byte 0xe9 at byte offset {raw.index(0xE9)}")
