"""Fixtures for the quality tests: planted data files (see planted.py for what is planted where)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.quality.planted import Planted, make_planted


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    return make_planted(tmp_path)
