"""Parity check: an export against the run it came from, on a golden set of prompts.

For each prompt, the reference model (the run as `load_run` gives it) decodes a greedy continuation; then
prompt + continuation goes through both models and we compare logits at every position (max and mean
absolute difference, and how often the top-1 token agrees), and the export decodes its own greedy
continuation, which must equal the reference's. Both sides get the same token ids (from the run's
tokenizer), so weight differences are measured apart from tokenizer differences; the export's own
tokenizer is checked separately on the same prompts and must give the same ids.

Tolerances are per format and GGUF type: `hf`, `merged` and GGUF f32 are the same float32 math up to
summation order; f16 rounds weights to 11 bits, bf16 to 8, q8_0 to 8 per 32-value block, and the 5- and
4-bit types much further, so their logit tolerances are wider, greedy text may drift in a continuation,
and a floor on top-1 agreement (teacher-forced, every position) is what still separates a faithful
low-bit export from a broken one. The low-bit values were calibrated on the real stories260k model
(260K parameters: small models suffer most from rounding) with margin; docs/export.md lists measurements.
Anything beyond tolerance raises `VerifyError`. `record` writes the report into the export folder
(verify.json) and refreshes its model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.eval.card import write_export_card
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
# (max abs logit diff, min fraction of prompts whose greedy continuation matches exactly, min top-1 agreement).
# Top-1 flips are allowed only between tokens the reference ranks within the logit tolerance of each other:
# a near-tie may flip under rounding, a clear winner may not. Where the logit tolerance is wide (5 and 4 bits)
# that rule allows too much, and a floor on top-1 agreement takes its place.
_Q5, _Q4 = (4.0, 0.0, 0.9), (10.0, 0.0, 0.8)
TOLERANCES: dict[str, tuple[float, float, float]] = {
    "hf": (1e-4, 1.0, 0.0),
    "merged": (1e-3, 1.0, 0.0),
    "gguf-f32": (1e-3, 1.0, 0.0),
    "gguf-f16": (0.1, 0.8, 0.0),
    "gguf-bf16": (0.5, 0.5, 0.0),
    "gguf-q8_0": (0.5, 0.5, 0.0),
    "gguf-q5_1": _Q5,
    "gguf-q5_0": _Q5,
    "gguf-q4_1": _Q4,
    "gguf-q4_0": _Q4,
    # written by llama.cpp's quantizer (not run in tunelab's tests): set by bits per weight next to the above
    "gguf-q6_k": (1.0, 0.5, 0.0),
    "gguf-q5_k_s": _Q5,
    "gguf-q5_k_m": _Q5,
    "gguf-q4_k_s": _Q4,
    "gguf-q4_k_m": _Q4,
    "gguf-q3_k_s": (16.0, 0.0, 0.6),
    "gguf-q3_k_m": (16.0, 0.0, 0.6),
    "gguf-q3_k_l": (16.0, 0.0, 0.6),
    "gguf-q2_k": (16.0, 0.0, 0.5),
    "gguf-iq4_nl": _Q4,
    "gguf-iq4_xs": _Q4,
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
    tolerance: tuple[float, float, float]
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
    tolerance: tuple[float, float, float] | None = None,
    record: bool = False,
) -> VerifyReport:
    """Compare the export with its run; raises VerifyError (with the report attached) beyond tolerance."""
    info = read_export(export_dir)
    fmt = info["format"] + (f"-{info.get('type', 'f16')}" if info["format"] == "gguf" else "")
    if tolerance is None and fmt not in TOLERANCES:
        raise TunelabError(f"{export_dir}: no tolerance known for {fmt}; pass one")
    tol = (*tolerance, 0.0)[:3] if tolerance else TOLERANCES[fmt]  # a (logits, greedy) pair sets no top-1 floor
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
    if record:
        record_verification(export_dir, report)
    if not report.passed:
        raise VerifyError(f"{export_dir} does not match {against}: " + "; ".join(report.failures), report)
    return report


def record_verification(export_dir: str | Path, report: VerifyReport) -> None:
    """verify.json in the export folder, and its model card refreshed with the parity figures."""
    import json

    (Path(export_dir) / "verify.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    write_export_card(export_dir)


def _judge(r: VerifyReport) -> None:
    max_diff, min_greedy, min_top1 = r.tolerance
    if not r.max_abs_logit_diff <= max_diff:  # `not <=` also catches NaN
        r.failures.append(f"max |logit diff| {r.max_abs_logit_diff:.3g} > {max_diff:.3g}")
    if r.clear_top1_flips:
        r.failures.append(f"{r.clear_top1_flips} positions pick a token the run ranks over {max_diff:.3g} lower")
    if r.top1_agreement < min_top1:
        r.failures.append(f"top-1 agreement {r.top1_agreement:.3f} < {min_top1}")
    if r.greedy_agreement < min_greedy:
        r.failures.append(f"greedy output agreement {r.greedy_agreement:.2f} < {min_greedy}")
    if r.tokenizer_agreement < 1.0:
        r.failures.append(f"the export's tokenizer gives different ids on {1 - r.tokenizer_agreement:.0%} of prompts")
