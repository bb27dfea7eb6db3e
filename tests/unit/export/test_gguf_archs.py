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

import numpy as np
import pytest
from archs import ARCH_CONFIGS, trained_model

from tunelab.export.exporters import export
from tunelab.export.gguf import GGUF_TYPES
from tunelab.export.verify import verify

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


# Worst-case rounding error of one value, as a fraction of its 32-value block's largest magnitude: symmetric
# 8/5/4-bit types round to a step of absmax/127, /16, /8 (half a step, or a whole one where the top clamps);
# the offset types (_1) split max - min (<= 2 absmax) into 31 or 15 steps. Scales (and offsets) are stored in
# f16, which adds up to absmax * 2^-10. Floats: relative to the value (f16 subnormals: absolute 2^-25).
BLOCK_BOUND = {"q8_0": 1 / 254, "q5_0": 1 / 16, "q4_0": 1 / 8, "q5_1": 1 / 31, "q4_1": 1 / 15}
FLOAT_BOUND = {"f32": 0.0, "f16": 2.0**-11, "bf16": 2.0**-8}


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_every_tensor_is_rounded_within_its_format(tmp_path: Path, qtype: str) -> None:
    """Read the file back with gguf's reader and compare each tensor, value by value, with what was written."""
    import torch
    from archs import tiny_model
    from gguf import GGUFReader, dequantize

    from tunelab.export.gguf import ARCHS, _gguf_names, _prepare, write_gguf

    model, tok = tiny_model("qwen2")  # biases, GQA and an untied head (kept at q8_0 in 4/5-bit files)
    info = write_gguf(model, tok, tmp_path / "m.gguf", qtype)
    names = _gguf_names(model.config, ARCHS["qwen2"])
    wanted = {names.get_name(k, try_suffixes=(".weight", ".bias")): (k, v) for k, v in model.state_dict().items()}
    tensors = GGUFReader(str(tmp_path / "m.gguf")).tensors
    assert {t.name for t in tensors} == set(wanted)
    for t in tensors:
        original = _prepare(wanted[t.name][1], t.name, model.config, ARCHS["qwen2"]).astype(np.float64)
        back = dequantize(t.data, t.tensor_type).reshape(original.shape).astype(np.float64)
        kind = t.tensor_type.name.lower()
        if kind in FLOAT_BOUND:
            assert np.all(np.abs(back - original) <= np.abs(original) * FLOAT_BOUND[kind] + 2.0**-25), t.name
        else:
            blocks = original.reshape(-1, 32)
            bound = np.abs(blocks).max(axis=1, keepdims=True) * (BLOCK_BOUND[kind] + 2.0**-10)
            assert np.all(np.abs(back.reshape(-1, 32) - blocks) <= bound), t.name
        expected = qtype if original.ndim == 2 else "f32"
        if t.name in info["q8_0_head"]:
            expected = "q8_0"
        elif t.name in info["f16_fallback"]:
            expected = "f16"
        assert kind == expected, t.name
    assert torch.equal(wanted["token_embd.weight"][1], model.model.embed_tokens.weight)
