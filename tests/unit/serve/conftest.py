"""Run directories for serving tests: a tiny full-model run and two tiny LoRA runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_factory import make_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "full": make_run(root, "full"),
        "lora": make_run(root, "lora-a", lora_seed=1),
        "lora2": make_run(root, "lora-b", lora_seed=2),
    }
