"""Run directories for serving tests: a tiny full-model run and two tiny LoRA runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pg import fresh_database, postgres, skip_reason
from run_factory import make_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "full": make_run(root, "full"),
        "lora": make_run(root, "lora-a", lora_seed=1),
        "lora2": make_run(root, "lora-b", lora_seed=2),
    }


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the session (started here; skipped with the reason when it cannot be)."""
    if reason := skip_reason():
        pytest.skip(reason)
    with postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """An empty database of its own for one test."""
    return fresh_database(pg_server)
