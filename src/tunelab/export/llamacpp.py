"""llama.cpp's own tools, for what tunelab's GGUF writer does not do itself.

- K-quants and the other llama.cpp-only types (LLAMA_CPP_TYPES, e.g. q4_k_m): tunelab writes an f32 GGUF,
  then `llama-quantize` rounds it, as llama.cpp's own workflow does (convert to a float type, then quantize).
- Architectures, RoPE scalings or tokenizers tunelab's writer refuses: `--gguf-converter llama.cpp` saves the
  merged model and runs llama.cpp's `convert_hf_to_gguf.py` on it (then `llama-quantize` when the type needs it).

The tools are looked for in a llama.cpp folder given by the `llama_cpp` argument (`--llama-cpp DIR`) or the
TUNELAB_LLAMA_CPP environment variable (a checkout with a build, or a release archive), else on PATH. When
one is missing the export stops with a message that says which tool, where it looked, and the types tunelab
writes without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

LLAMA_CPP_TYPES = ("q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k",
                   "iq4_nl", "iq4_xs")  # fmt: skip
CONVERT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py --outtype writes itself
QUANTIZE = "llama-quantize"
CONVERT = "convert_hf_to_gguf.py"
ENV = "TUNELAB_LLAMA_CPP"


@dataclass(frozen=True)
class Tools:
    quantize: Path | None
    convert: Path | None
    searched: str  # where they were looked for, for messages


def find_tools(llama_cpp: str | Path | None = None) -> Tools:
    """llama-quantize and convert_hf_to_gguf.py from the given folder, $TUNELAB_LLAMA_CPP, or PATH."""
    root = llama_cpp or os.environ.get(ENV)
    if root:
        base = Path(root).expanduser()
        dirs = [base, base / "build" / "bin", base / "bin"]
        quantize = next((d / QUANTIZE for d in dirs if (d / QUANTIZE).is_file()), None)
        convert = next((d / CONVERT for d in dirs if (d / CONVERT).is_file()), None)
        return Tools(quantize, convert, f"{base} (and its build/bin, bin)")
    which = shutil.which
    convert_path = which(CONVERT) or which(CONVERT.removesuffix(".py"))
    return Tools(_path(which(QUANTIZE)), _path(convert_path), f"PATH (set {ENV} or pass --llama-cpp DIR)")


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None


def require(tool: Path | None, name: str, why: str, tools: Tools, own_types: tuple[str, ...]) -> Path:
    if tool is None:
        raise TunelabError(
            f"{why} needs llama.cpp's {name}, which was not found in {tools.searched}. Install llama.cpp "
            "(https://github.com/ggml-org/llama.cpp: a release, `brew install llama.cpp`, or a build) and point "
            f"--llama-cpp at it, or choose a type tunelab writes itself: {', '.join(own_types)}"
        )
    return tool


def quantize_command(tool: Path, src: Path, dst: Path, qtype: str) -> list[str]:
    """llama-quantize INPUT OUTPUT TYPE (llama.cpp names its types in capitals: Q4_K_M)."""
    return [str(tool), str(src), str(dst), qtype.upper()]


def convert_command(script: Path, model_dir: Path, out: Path, outtype: str) -> list[str]:
    """convert_hf_to_gguf.py MODEL_DIR --outfile OUT --outtype TYPE, under this Python when it is a script."""
    head = [sys.executable, str(script)] if script.suffix == ".py" else [str(script)]
    return [*head, str(model_dir), "--outfile", str(out), "--outtype", outtype]


def run(cmd: list[str]) -> None:
    """Run one llama.cpp command; its output tail becomes the error message when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise TunelabError(f"{Path(cmd[1] if cmd[0] == sys.executable else cmd[0]).name} failed "
                           f"(exit {proc.returncode}):\n  " + "\n  ".join(tail))  # fmt: skip
