"""Helpers of the `tunelab tune` tests: a tiny search config on the tiny preset, and the trials' labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from tests.conftest import REPO

DATA = REPO / "src" / "tunelab" / "examples" / "data" / "tiny_sft.jsonl"


def write_config(tmp_path: Path, sections: dict[str, dict[str, Any]] | None = None, **tune_over: object) -> Path:
    """tmp_path/tune.yaml: LoRA on the tiny preset, 6 steps with an eval every 2, TPE over lr, mode and rank with
    median pruning; `tune_over` replaces keys of the tune section, `sections` merges into the others."""
    cfg: dict[str, Any] = {
        "model": {"name_or_path": "tiny"},
        "tuning": {"mode": "lora"},
        "data": {"train": [{"path": str(DATA)}], "eval_ratio": 0.2, "check": None, "cache_dir": str(tmp_path / "c")},
        "train": {"max_steps": 6, "eval_every": 2, "log_every": 2, "batch_size": 8, "threads": 1},
        "eval": {"forgetting": {"enabled": False}},
        "output": {"dir": str(tmp_path / "runs"), "name": "search"},
        "tune": {
            "trials": 8,
            "sampler": "tpe",
            "startup_trials": 3,
            "compare": False,
            "space": {
                "train.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
                "tuning.mode": {"type": "categorical", "choices": ["lora", "full"]},
                "tuning.lora.r": {"type": "int", "low": 2, "high": 16, "when": {"tuning.mode": "lora"}},
            },
            "pruner": {"kind": "median", "startup_trials": 1},
        }
        | tune_over,
    }
    for name, over in (sections or {}).items():
        cfg[name] = cfg.get(name, {}) | over
    path = tmp_path / "tune.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def labels(root: Path) -> dict[int, dict]:
    """trial number -> its trial.json."""
    return {int(p.parent.name.split("-")[1]): json.loads(p.read_text()) for p in root.glob("trial-*/trial.json")}
