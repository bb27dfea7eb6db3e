"""Export tests build runs with the serving tests' run factory (tests/unit/serve/run_factory.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
