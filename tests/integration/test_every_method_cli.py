"""Every registered method trains for a step through the real CLI from its example config, and writes final/.
A new method without an example, or whose example does not train, fails here (see tests/unit/methods/test_registry.py
for the rest of the registry checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.methods.test_registry import example_for

from tunelab.cli import main
from tunelab.methods import METHODS

EXTRA = {"distill": ["method.distill.teacher=tiny"]}  # the example's teacher is a run made by another example


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_from_its_example_through_the_cli(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = ["train.max_steps=1", "train.eval_every=1000", "train.threads=1", "eval.baseline=false",
                 f"output.dir={tmp_path}", "output.name=run", f"data.cache_dir={tmp_path / 'cache'}", *EXTRA.get(name, [])]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(["train", str(example_for(name)), *overrides])
    assert done.value.code in (0, None)
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file() or (final / "config.json").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().strip()
