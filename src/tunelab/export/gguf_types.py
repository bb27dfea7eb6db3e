"""The GGUF weight types tunelab writes itself (GGUF_TYPES): those of TYPES the installed `gguf` package can
produce in numpy. Apart from tunelab.export.gguf (torch), so that `tunelab export --help` lists them fast."""

from __future__ import annotations

import numpy as np

# tunelab name -> (GGML tensor type, llama.cpp file type), both by their names in the gguf package
TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}


def _writable(name: str) -> bool:
    """Whether the installed gguf package can produce this type in numpy (older releases lack some)."""
    import gguf

    try:
        gguf.quants.quantize(np.zeros((1, 32), np.float32), getattr(gguf.GGMLQuantizationType, TYPES[name][0]))
    except NotImplementedError:
        return False
    return True


GGUF_TYPES = tuple(t for t in TYPES if _writable(t))
