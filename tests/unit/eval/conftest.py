"""Eval tests run torch on one thread: on a shared 2-core machine two intra-op threads contend with other
processes and a tiny model's step went from ~10 ms to ~1 s (measured); one thread avoids that."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
