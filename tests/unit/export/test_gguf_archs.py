"""Every GGUF type on every supported architecture, verified against the model it came from.

Each architecture is a tiny model built from config and trained for a few seconds (tests/unit/export/archs.py),
saved as a model folder, exported, and verified by `tunelab.export.verify`: loaded back through transformers'
GGUF reader, logits and greedy continuations compared on the golden prompts. By default Llama runs every
type and the other architectures f32 (exact), q8_0 and q4_0; the rest of the matrix is marked slow. The figures
are the table in docs/export.md, written by
`TUNELAB_EXPORT_TABLE=table.md pytest -m "" tests/unit/export/test_gguf_archs.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from archs import ARCH_CONFIGS, trained_model

from tunelab.export import export, verify
from tunelab.export.gguf import GGUF_TYPES

ROWS: dict[tuple[str, str], dict[str, float]] = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> saved model folder (trained once per module, on first use)."""
    return {}


def model_dir(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    if arch not in models:
        model, tok = trained_model(arch)
        folder = tmp_path_factory.mktemp(arch)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        models[arch] = folder
    return models[arch]


@pytest.fixture(scope="module", autouse=True)
def _table() -> object:
    yield
    out = os.environ.get("TUNELAB_EXPORT_TABLE")
    if out and ROWS:
        Path(out).write_text(markdown_table(ROWS))


def markdown_table(rows: dict[tuple[str, str], dict[str, float]]) -> str:
    lines = ["| architecture | type | max abs logit diff | mean abs logit diff | top-1 agreement | greedy equal |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for (arch, qtype), r in rows.items():
        lines.append(f"| {arch} | {qtype} | {r['max']:.3g} | {r['mean']:.2g} | {r['top1']:.1%} | {r['greedy']:.0%} |")
    return "\n".join(lines) + "\n"


DEFAULT = ("f32", "q8_0", "q4_0")
MATRIX = [
    pytest.param(a, t, marks=[] if a == "llama" or t in DEFAULT else [pytest.mark.slow])
    for a in ARCH_CONFIGS
    for t in GGUF_TYPES
]


@pytest.mark.parametrize(("arch", "qtype"), MATRIX)
def test_gguf_type_matches_the_model(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                     tmp_path: Path, arch: str, qtype: str) -> None:  # fmt: skip
    src = model_dir(models, tmp_path_factory, arch)
    out = export(src, "gguf", tmp_path / "out", qtype=qtype, modelfile=False)
    report = verify(out, src, max_new_tokens=16)  # 6 golden prompts, 16 greedy tokens each
    ROWS[(arch, qtype)] = {"max": report.max_abs_logit_diff, "mean": report.mean_abs_logit_diff,
                           "top1": report.top1_agreement, "greedy": report.greedy_agreement}  # fmt: skip
    assert report.passed and report.tokenizer_agreement == 1.0, report.failures
    if qtype == "f32":  # the same float32 weights: any layout or metadata slip would show here
        assert report.max_abs_logit_diff < 1e-4 and report.greedy_agreement == 1.0
