"""Loss and perplexity of reference answers given prompts, and the forgetting probe on general text.

Answers are tokenized by training's own path (tunelab.data.tokenize.Encoder), so exactly the tokens that
carry loss in training count here: the answer and its end-of-turn/EOS token, never the prompt. The
aggregate loss is token-weighted (what "perplexity" means); per-example losses are each example's mean
NLL (what the paired bootstrap compares). Sequences longer than `max_length` lose tokens from the left,
so the answer is kept; such cuts are counted in `truncated`. An example with no counted token gets a NaN
loss and is counted in `empty`.

The forgetting probe is perplexity on general English text (by default a set of short original
paragraphs shipped in tunelab/assets/general_text.jsonl) before and after fine-tuning; a relative rise
above a threshold is a regression. For a model trained from random weights (a preset) the check is "not
applicable": such a model never learned general text, so its perplexity there has nothing to say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.console import progress as progress_bar
from tunelab.data.records import Conversation, Message, PromptCompletion
from tunelab.data.tokenize import IGNORE, Encoder, chat_template_for
from tunelab.errors import DataError
from tunelab.models.generate import Prompt
from tunelab.models.loader import random_init_preset
from tunelab.scoring.metrics import MetricResult
from tunelab.textio import read_text


@dataclass
class LossResult:
    loss: float  # token-weighted mean NLL
    perplexity: float
    per_example: list[float]  # mean NLL of each example's counted tokens (NaN when it has none)
    tokens: list[int]  # counted tokens per example
    truncated: int = 0
    empty: int = 0

    def metric(self, name: str = "loss") -> MetricResult:
        details = {"tokens": sum(self.tokens), "truncated": self.truncated, "empty": self.empty}
        return MetricResult(
            name, {"loss": self.loss, "perplexity": self.perplexity}, {"loss": self.per_example}, details
        )


def answer_loss(model: Any, tokenizer: Any, prompts: Sequence[Prompt], answers: Sequence[str], *,
                batch_size: int = 8, max_length: int = 1024, chat_template: str | None = None,
                progress: bool = True) -> LossResult:  # fmt: skip
    """NLL of each answer given its prompt (a message list or a raw prompt string)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    encoder = Encoder(tokenizer, chat_template_for(tokenizer, chat_template))
    seqs, truncated = [], 0
    for prompt, answer in zip(prompts, answers):
        if isinstance(prompt, str):
            ex = encoder.encode(PromptCompletion(prompt, answer))
        else:
            msgs = tuple(Message(m["role"], m["content"]) for m in prompt)
            ex = encoder.encode(Conversation((*msgs, Message("assistant", answer))))
        ids, labels = ex.input_ids, ex.labels
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[-max_length:], labels[-max_length:]
        seqs.append((ids, [lab != IGNORE for lab in labels]))
    return _loss(model, seqs, batch_size, truncated, progress)


def text_loss(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 512,
              progress: bool = True) -> LossResult:  # fmt: skip
    """NLL of every token of each text after the first (the tokenizer's BOS, when it adds one, is context)."""
    seqs, truncated = [], 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) > max_length:
            truncated += 1
            ids = ids[:max_length]
        seqs.append((ids, [True] * len(ids)))
    return _loss(model, seqs, batch_size, truncated, progress)


def sequence_nll(model: Any, seqs: Sequence[tuple[list[int], list[bool]]], batch_size: int,
                 progress: bool = False, desc: str = "loss") -> tuple[list[float], list[int]]:  # fmt: skip
    """(summed NLL, counted tokens) per sequence; seqs: (token ids, whether each token counts). Token 0 never
    counts: nothing predicts it. A sequence's log-probability is minus its summed NLL."""
    device = next(model.parameters()).device
    sums, counts = [0.0] * len(seqs), [0] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in progress_bar(range(0, len(seqs), batch_size), desc=desc, unit="batch", disable=not progress):
                batch = list(seqs[start : start + batch_size])
                nll, mask = _batch_nll(model, batch, device)
                for j in range(len(batch)):
                    sums[start + j] = float(nll[j][mask[j]].sum())
                    counts[start + j] = int(mask[j].sum())
    finally:
        model.train(was_training)
    return sums, counts


def _loss(model: Any, seqs: list[tuple[list[int], list[bool]]], batch_size: int, truncated: int,
          progress: bool) -> LossResult:  # fmt: skip
    sums, counts = sequence_nll(model, seqs, batch_size, progress)
    per = [s / c if c else float("nan") for s, c in zip(sums, counts)]
    total = sum(counts)
    loss = sum(sums) / total if total else float("nan")
    return LossResult(loss, math.exp(loss) if total else float("nan"), per, counts, truncated, counts.count(0))


def _batch_nll(
    model: Any, batch: list[tuple[list[int], list[bool]]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    counted = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, (row, counts) in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        counted[i, : len(row)] = torch.tensor(counts)
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1].float()
    targets = ids[:, 1:].to(device)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return nll.cpu(), counted[:, 1:]


# --------------------------------------------------------------------------- forgetting


def load_probe_texts(path: str | Path | None = None) -> list[str]:
    """The {text: ...} JSONL probe set at `path`, or the general-text set shipped with tunelab."""
    if path is None:
        source = "tunelab/assets/general_text.jsonl"
        lines = resources.files("tunelab").joinpath("assets/general_text.jsonl").read_text(encoding="utf-8")
    else:
        source = str(path)
        lines = read_text(path, "probe texts")  # not UTF-8: the line and byte offset
    texts = []
    for lineno, line in enumerate(lines.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", where=source, line=lineno) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise DataError("expected an object with a non-empty string", where=source, line=lineno, field="text")
        texts.append(row["text"])
    if not texts:
        raise DataError("no probe texts", where=source)
    return texts


@dataclass(frozen=True)
class ForgettingResult:
    before: float  # perplexity before fine-tuning
    after: float
    relative_change: float  # (after - before) / before
    threshold: float
    regressed: bool
    n_texts: int
    source: str = "general_text"
    applicable: bool = True  # False when the base never learned general text: nothing to forget, no verdict
    reason: str = ""  # why not applicable


def forgetting_check(before: LossResult, after: LossResult, threshold: float, source: str = "general_text",
                     not_applicable: str | None = None) -> ForgettingResult:  # fmt: skip
    """Flag a regression when perplexity rose by more than `threshold` (relative). With `not_applicable` (the
    reason) the numbers are kept but there is no verdict: a model trained from random weights has no general
    text to forget, and its perplexity on it going up or down means nothing."""
    if len(before.tokens) != len(after.tokens):
        raise ValueError("forgetting check needs the same probe texts before and after")
    change = (after.perplexity - before.perplexity) / before.perplexity
    return ForgettingResult(before.perplexity, after.perplexity, change, threshold,
                            change > threshold and not not_applicable, len(before.tokens), source,
                            not not_applicable, not_applicable or "")  # fmt: skip


def not_applicable_reason(base: str) -> str | None:
    """Why the forgetting check means nothing for a model trained from `base`, or None when it applies."""

    preset = random_init_preset(base)
    if preset is None:
        return None
    where = "is" if preset == str(base) else f"was trained from {preset}, which is"
    return f"the base model {base} {where} a randomly initialised preset that never learned general text"


def forgetting_verdict(fg: dict[str, Any]) -> str:
    """ok, REGRESSION or not applicable (a forgetting.json of any tunelab version)."""
    if not fg.get("applicable", True):
        return "not applicable"
    return "REGRESSION" if fg["regressed"] else "ok"


def perplexity_text(x: float) -> str:
    """12.35, 1,035, 547,912: four significant digits, whole numbers with separators from 1000 up."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def forgetting_line(fg: dict[str, Any]) -> str:
    """One line for people: 'general-text perplexity 10 -> 12.5 (+25.0%, threshold +10%): REGRESSION'."""
    text = (f"general-text perplexity {perplexity_text(fg['before'])} -> {perplexity_text(fg['after'])} "
            f"({fg['relative_change']:+.1%}, threshold +{fg['threshold']:.0%}): {forgetting_verdict(fg)}")  # fmt: skip
    return text + (f" ({fg['reason']})" if fg.get("reason") and not fg.get("applicable", True) else "")
