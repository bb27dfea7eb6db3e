"""Run as a script: for each width given, save one real checkpoint (accelerate + tunelab.train.checkpoint) of a
linear layer that wide into ROOT/w<width> and print, as JSON, the error (if any) and what is left there. Tests run
it under a file-size limit or on a tiny file system to see how a failed write is reported and cleaned up."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from tunelab.errors import TunelabError
from tunelab.train import checkpoint as ckpt


def save(acc: Accelerator, root: Path, width: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    model(torch.randn(2, width)).sum().backward()
    opt.step()  # the optimizer holds state (two moments per weight): optimizer.bin is twice the model
    error = None
    try:
        ckpt.save(acc, root, 1, {})
    except TunelabError as e:
        error = str(e)
    acc.free_memory()  # forget this model and optimizer: the next save holds only its own
    return {"error": error, "left": sorted(os.listdir(root))}


def main(root: str, widths: list[int]) -> None:
    acc = Accelerator(cpu=True)
    ckpt.register_trainable_only(acc)
    print(json.dumps({w: save(acc, Path(root) / f"w{w}", w) for w in widths}))


if __name__ == "__main__":
    main(sys.argv[1], [int(w) for w in sys.argv[2:]])
