"""Fixtures for the studio's tests (helpers in studiokit.py): a throwaway PostgreSQL for the queue's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))  # the throwaway PostgreSQL of the serving tests
from pg import fresh_database, postgres, skip_reason  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    if reason := skip_reason():
        pytest.skip(reason)
    with postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> str:
    return fresh_database(pg_server)
