"""Parity check: an export against the run it came from, on a golden set of prompts.

For each prompt, the reference model (the run as `load_run` gives it) decodes a greedy continuation; then
prompt + continuation goes through both models and we compare logits at every position (max and mean
absolute difference, and how often the top-1 token agrees), and the export decodes its own greedy
continuation, which must equal the reference's. Both sides get the same token ids (from the run's
tokenizer), so weight differences are measured apart from tokenizer differences; the export's own
tokenizer is checked separately on the same prompts and must give the same ids.

Tolerances are per format: `hf` and `merged` are the same float32 math up to summation order, `gguf` f16
rounds weights to 11 bits and q8_0 to 8 (per 32-value block), so their logit tolerances are wider and
greedy text may drift late in a continuation. Anything beyond tolerance raises `VerifyError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.export.exporters import load_export, load_source, read_export

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain recursion to a child in two sentences.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "Give me a tip for learning to cook.",
]
TEXT_PROMPTS = [
    "Once upon a time",
    "The little dog ran to the park and",
    "Lily and Ben were best friends. One day",
    "The sun was shining and the birds",
    "Tom found a big red ball.",
    "",
]
# (max abs logit diff, min fraction of prompts whose greedy continuation matches exactly). Top-1 flips are
# allowed only between tokens the reference ranks within that logit tolerance of each other: a near-tie
# may flip under rounding, a clear winner may not.
TOLERANCES: dict[str, tuple[float, float]] = {
    "hf": (1e-4, 1.0),
    "merged": (1e-3, 1.0),
    "gguf-f16": (0.1, 0.8),
    "gguf-q8_0": (0.5, 0.5),
}


class VerifyError(TunelabError):
    """The export does not match its run within tolerance (the full report is attached)."""

    def __init__(self, message: str, report: VerifyReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class VerifyReport:
    format: str
    prompts: int
    positions: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    clear_top1_flips: int
    greedy_agreement: float
    tokenizer_agreement: float
    tolerance: tuple[float, float]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def golden_prompts(tokenizer: Any, prompts: list[str] | None = None) -> list[list[int]]:
    """Token ids of the golden prompts: chat-formatted when the tokenizer has a chat template."""
    if getattr(tokenizer, "chat_template", None):
        out = []
        for p in prompts or CHAT_PROMPTS:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
            out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        return out
    return [list(tokenizer(p)["input_ids"]) for p in (prompts or TEXT_PROMPTS)]


def _eos(model: Any, tokenizer: Any) -> list[int]:
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = gen if isinstance(gen, list) else [gen]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


@torch.no_grad()
def _greedy(model: Any, ids: list[int], n: int, eos: list[int], pad: int) -> list[int]:
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return out[0, len(ids) :].tolist()


def verify(
    export_dir: str | Path,
    against: str | Path,
    prompts: list[str] | None = None,
    max_new_tokens: int = 32,
    tolerance: tuple[float, float] | None = None,
) -> VerifyReport:
    """Compare the export with its run; raises VerifyError (with the report attached) beyond tolerance."""
    info = read_export(export_dir)
    fmt = info["format"] + (f"-{info.get('type', 'f16')}" if info["format"] == "gguf" else "")
    tol = tolerance or TOLERANCES[fmt]
    ref, tok = load_source(against)
    exp, exp_tok = load_export(export_dir, against)
    ref.eval()
    eos, pad = _eos(ref, tok), tok.pad_token_id if tok.pad_token_id is not None else _eos(ref, tok)[0]
    texts = prompts or (CHAT_PROMPTS if getattr(tok, "chat_template", None) else TEXT_PROMPTS)
    golden = golden_prompts(tok, texts)
    tok_same = sum(golden_prompts(exp_tok, texts)[i] == g for i, g in enumerate(golden)) if exp_tok else 0
    diffs, agree, flips, positions, greedy_same = [], 0, 0, 0, 0
    for ids in golden:
        cont = _greedy(ref, ids, max_new_tokens, eos, pad)
        full = torch.tensor([ids + cont])
        with torch.no_grad():
            a, b = ref(full).logits[0].float(), exp(full).logits[0].float()
        diffs.append((a - b).abs())
        ra, rb = a.argmax(-1), b.argmax(-1)
        agree += int((ra == rb).sum())
        gap = a.gather(-1, ra[:, None]) - a.gather(-1, rb[:, None])  # how much worse the reference finds b's pick
        flips += int((gap > tol[0]).sum())
        positions += a.shape[0]
        greedy_same += int(_greedy(exp, ids, max_new_tokens, eos, pad) == cont)
    d = torch.cat([x.flatten() for x in diffs])
    report = VerifyReport(
        format=fmt,
        prompts=len(golden),
        positions=positions,
        max_abs_logit_diff=float(d.max()),
        mean_abs_logit_diff=float(d.mean()),
        top1_agreement=agree / positions,
        clear_top1_flips=flips,
        greedy_agreement=greedy_same / len(golden),
        tokenizer_agreement=tok_same / len(golden),
        tolerance=tol,
        failures=[],
    )
    _judge(report)
    if not report.passed:
        raise VerifyError(f"{export_dir} does not match {against}: " + "; ".join(report.failures), report)
    return report


def _judge(r: VerifyReport) -> None:
    max_diff, min_greedy = r.tolerance
    if not r.max_abs_logit_diff <= max_diff:  # `not <=` also catches NaN
        r.failures.append(f"max |logit diff| {r.max_abs_logit_diff:.3g} > {max_diff:.3g}")
    if r.clear_top1_flips:
        r.failures.append(f"{r.clear_top1_flips} positions pick a token the run ranks over {max_diff:.3g} lower")
    if r.greedy_agreement < min_greedy:
        r.failures.append(f"greedy output agreement {r.greedy_agreement:.2f} < {min_greedy}")
    if r.tokenizer_agreement < 1.0:
        r.failures.append(f"the export's tokenizer gives different ids on {1 - r.tokenizer_agreement:.0%} of prompts")
