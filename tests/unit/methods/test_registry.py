"""The method registry is complete: every method has its config names, settings section, example config, doc
section and table row, and data the example reads of the method's kind. (Each example also trains through the
CLI: tests/integration/test_every_method_cli.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tunelab import config
from tunelab.api import validate
from tunelab.cli.docs import with_methods_table
from tunelab.config import MethodConfig, Section, load_config
from tunelab.data.prepare import DATA_DESCRIPTIONS, PREPARERS
from tunelab.methods import METHODS
from tunelab.models.heads import HEAD_KINDS

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "src" / "tunelab" / "examples"
DOC = REPO / "docs" / "methods.md"


def example_for(name: str) -> Path:
    """The example config of method `name` (one named after it first, e.g. dpo-lora.yaml)."""
    ranked = sorted(EXAMPLES.glob("*.yaml"), key=lambda p: (p.stem != name, p.stem != f"{name}-lora", p.name))
    for path in ranked:
        raw = yaml.safe_load(path.read_text())
        if (raw.get("method") or {}).get("name", "sft") == name and not raw.get("stages"):
            return path
    raise AssertionError(f"no example config in {EXAMPLES} trains method {name!r}")


def test_config_names_and_settings_sections_match_the_registry() -> None:
    assert tuple(METHODS) == config.METHOD_NAMES
    sections = {k for k in MethodConfig.model_fields if k != "name"}
    owned = {s.settings for s in METHODS.values() if s.settings}
    assert sections == owned, sections ^ owned
    for name in owned:
        assert issubclass(MethodConfig.model_fields[name].annotation, Section), name


def test_every_spec_names_a_known_data_kind_and_head() -> None:
    for name, spec in METHODS.items():
        assert spec.data in PREPARERS and spec.data in DATA_DESCRIPTIONS, name
        assert spec.head is None or spec.head in HEAD_KINDS, name
        assert spec.summary and callable(spec.build), name


def test_the_docs_table_is_current_and_every_method_has_a_section() -> None:
    doc = DOC.read_text()
    assert with_methods_table(doc) == doc, "run `make docs` to regenerate the methods table in docs/methods.md"
    prose = re.sub(r"<!-- methods-table.*?<!-- /methods-table -->", "", doc, flags=re.S)
    for name in METHODS:
        heading = re.search(rf"^#+ .*\b{name}\b", prose, re.M | re.I)
        assert heading or f"**{name}**" in prose, f"docs/methods.md has no section or **{name}** item"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_an_example_that_reads_its_kind_of_data(name: str, tmp_path: Path) -> None:
    path = example_for(name)
    cfg = load_config(path, [f"data.cache_dir={tmp_path}"])
    report = validate(cfg)
    assert report["datasets"] and all(d["records"] > 0 for d in report["datasets"]), report
