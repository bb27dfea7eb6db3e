"""What both tools share in the training benchmark: the job, the data split, the token counts, the eval loss
and the FLOPs formula. Keeping these in one place is what makes the comparison fair.

- Split: the alpaca demo file is shuffled with a fixed seed and cut 90/10 into train.json/eval.json, which
  both tools read (tunelab by path, TRL as the same records tokenized by the same code).
- Tokens: tunelab's Encoder (ChatML template of the byte tokenizer, loss on the response only, truncated to
  max_length) produces the token ids and labels for BOTH tools, so they train on identical tokens; TRL gets
  them pre-tokenized (input_ids + completion_mask), which spares it its own tokenization time.
- Eval loss: `eval_loss` below, one plain forward per padded batch, mean cross-entropy over the labelled
  tokens of the held-out 10%, run on each tool's final model.
- FLOPs: `train_flops` = 6 * N * tokens + 12 * L * d * sum(s_i^2) (Kaplan/PaLM: 6N per token for forward +
  backward of all N parameters, plus attention scores and values over each example's own length s_i).
"""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path
from typing import Any

DATA = Path(os.environ.get("TUNELAB_BENCH_DATA", "/work/shared/data/alpaca_demo/alpaca_en_demo.json"))
JOB = dict(r=16, alpha=32, lr=2e-4, epochs=1, batch_size=8, max_length=512, warmup_ratio=0.03, seed=0)
SIZES = ("tiny-4m", "tiny-30m")


def write_split(work: Path, limit: int | None = None, seed: int = 0) -> dict[str, int]:
    """train.json / eval.json in `work`: a seeded 90/10 split of the first `limit` records (all by default)."""
    rows = json.loads(DATA.read_text())
    if limit:
        rows = rows[:limit]
    random.Random(seed).shuffle(rows)
    n_eval = max(1, round(len(rows) * 0.1))
    work.mkdir(parents=True, exist_ok=True)
    (work / "eval.json").write_text(json.dumps(rows[:n_eval], ensure_ascii=False))
    (work / "train.json").write_text(json.dumps(rows[n_eval:], ensure_ascii=False))
    return {"train": len(rows) - n_eval, "eval": n_eval}


def save_model(size: str, folder: Path) -> int:
    """The preset model + byte tokenizer saved as a normal HF folder (what TRL loads); returns its params."""
    from tunelab.models.presets import build_preset

    model, tok = build_preset(size, seed=0)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model.num_parameters()


def encode_file(path: Path, tokenizer: Any) -> list[Any]:
    """tunelab's Examples (input_ids, labels) for an alpaca JSON file: ChatML, response-only loss, truncated."""
    from tunelab.data.formats import alpaca
    from tunelab.data.tokenize import Encoder, chat_template_for, truncate

    enc = Encoder(tokenizer, chat_template_for(tokenizer))
    return [truncate(enc.encode(alpaca(r)), JOB["max_length"]) for r in json.loads(path.read_text())]


def packed_batch(examples: list[Any], seed: int = JOB["seed"]) -> dict[str, int]:
    """tunelab's packed rows for `examples` (shuffled and packed as tunelab.api does) and the rows per batch that
    hold about JOB batch_size examples: the batch_size tunelab's packing note suggests, so that tunelab takes
    the same optimizer steps per epoch as TRL's unpacked batches (packing 8 rows per step would take ~25% fewer)."""
    from tunelab.data.collate import pack

    order = list(examples)
    random.Random(seed).shuffle(order)
    rows = len(pack(order, JOB["max_length"]))
    return {"rows": rows, "batch_rows": max(1, round(JOB["batch_size"] * rows / len(examples)))}


def token_counts(examples: list[Any]) -> dict[str, int]:
    """Non-padding input tokens, loss-bearing tokens, and sum of squared lengths (for attention FLOPs)."""
    lengths = [len(e.input_ids) for e in examples]
    trained = sum(sum(1 for x in e.labels[1:] if x != -100) for e in examples)
    return {"tokens": sum(lengths), "loss_tokens": trained, "sum_len_sq": sum(n * n for n in lengths)}


def eval_loss(model: Any, examples: list[Any], pad_id: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over the labelled positions of `examples` (the same code for both tools)."""
    import torch
    import torch.nn.functional as F

    from tunelab.data.collate import collate

    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            b = collate([examples[i] for i in order[s : s + batch_size]], pad_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            targets = b["labels"][:, 1:]
            mask = targets != -100
            total += F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="sum").item()
            count += int(mask.sum())
    return total / max(count, 1)


def model_dims(folder: Path) -> dict[str, int]:
    cfg = json.loads((folder / "config.json").read_text())
    return {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"]}


def train_flops(n_params: int, counts: dict[str, int], dims: dict[str, int]) -> float:
    """Model FLOPs of one epoch: 6*N*tokens + 12*L*d*sum(s_i^2) (see the module docstring)."""
    return 6.0 * n_params * counts["tokens"] + 12.0 * dims["layers"] * dims["hidden"] * counts["sum_len_sq"]


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's current resident set size."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def malloc_mb() -> tuple[float, float, float] | None:
    """glibc's view (mallinfo2): (heap obtained from the OS, heap in use, mmapped blocks) in MB; None elsewhere.
    Heap minus in-use is memory freed by the program but kept by malloc: it still counts in RSS."""
    import ctypes

    class Info(ctypes.Structure):
        names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        _fields_ = [(n, ctypes.c_size_t) for n in (*names, "keepcost")]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = Info
    m = fn()
    return m.arena / 2**20, m.uordblks / 2**20, m.hblkhd / 2**20


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    import psutil
    import torch
    import transformers

    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
