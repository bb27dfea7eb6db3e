"""Held-out preference accuracy and reward margins of a preference run (dpo, simpo, orpo), before and after.

Each eval pair is scored by the method's implicit reward, from the model's log-probabilities of the chosen and
the rejected reply (the tokens that carry loss in training, from the same tokenization and truncation):
- `reference` (DPO and its losses): r = beta * (log pi(y) - log pi_ref(y)). The reference is the base model,
  which the baseline evaluation is run on, so the baseline saves its log-probabilities (every reward there is
  0: accuracy 0.5, margin 0) and the final evaluation reads them back. Without a baseline there is no reference
  to compare with, and the final figures are skipped with a note.
- `normalized` (SimPO, ORPO): r = beta * mean log pi(y) over the reply's tokens (length-normalized; no reference).
Accuracy counts a pair right when r(chosen) > r(rejected) (a tie counts 1/2); the margin is r(chosen) - r(rejected).
Results are `EvalResult`s (eval/preference_baseline.json, eval/preference_final.json) whose per-example scores the
paired bootstrap compares like any other metric. A reward model's own head is scored in tunelab.eval.heads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.preference import PairItem, prepare_preference
from tunelab.data.tokenize import IGNORE, Example
from tunelab.eval.perplexity import sequence_nll
from tunelab.eval.runner import EVAL_DIR, EvalExample, EvalResult
from tunelab.scoring.metrics import MetricResult

REWARD_KINDS = ("reference", "normalized")
BASELINE, FINAL = "preference_baseline.json", "preference_final.json"


def eval_pairs(cfg: RunConfig, tokenizer: Any) -> list[PairItem]:
    """The run's held-out pairs: eval.data if set, else its eval split (data.eval plus the eval_ratio share)."""
    if cfg.eval.data:
        data = cfg.data.model_copy(update={"train": list(cfg.eval.data), "eval": [], "eval_ratio": 0.0})
        items = prepare_preference(cfg.model_copy(update={"data": data}), tokenizer, "pairs").train
    else:
        items = prepare_preference(cfg, tokenizer, "pairs").eval
    return list(items)  # type: ignore[arg-type]  # a "pairs" preparation holds PairItems only


def reply_logps(model: Any, items: Sequence[PairItem], batch_size: int) -> tuple[list[float], list[int]]:
    """(log-prob sum, token count) of each chosen reply, then of each rejected one (2n entries)."""
    examples = [it.chosen for it in items] + [it.rejected for it in items]
    sums, counts = sequence_nll(model, [_counted(ex) for ex in examples], batch_size)
    return [-s for s in sums], counts


def _counted(ex: Example) -> tuple[list[int], list[bool]]:
    return list(ex.input_ids), [lab != IGNORE for lab in ex.labels]


def rewards(kind: str, beta: float, logps: list[float], counts: list[int], ref: list[float] | None) -> list[float]:
    """The implicit reward of each reply (see the module docstring)."""
    if kind == "reference":
        assert ref is not None
        return [beta * (lp - r) for lp, r in zip(logps, ref)]
    return [beta * lp / n if n else math.nan for lp, n in zip(logps, counts)]


def score(examples: list[EvalExample], logps: list[float], counts: list[int], reward: list[float], name: str,
          kind: str, beta: float) -> EvalResult:  # fmt: skip
    n = len(examples)
    chosen, rejected = reward[:n], reward[n:]
    acc = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    margin = [c - r for c, r in zip(chosen, rejected)]
    scores = {"preference_accuracy": _mean(acc), "reward_margin": _mean(margin), "chosen_reward": _mean(chosen),
              "rejected_reward": _mean(rejected)}  # fmt: skip
    details = {"reward": kind, "beta": beta, "pairs": n, "logps": logps, "tokens": counts}
    metric = MetricResult("preference", scores, {"preference_accuracy": acc, "reward_margin": margin}, details)
    preds = [f"r(chosen) {c:+.4f} vs r(rejected) {r:+.4f}" for c, r in zip(chosen, rejected)]
    return EvalResult(name, examples, preds, {"preference": metric})


def _mean(xs: list[float]) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    return sum(ok) / len(ok) if ok else math.nan


def evaluate_pairs(cfg: RunConfig, model: Any, tokenizer: Any, kind: str, beta: float, name: str,
                   reference: EvalResult | None = None) -> EvalResult | None:  # fmt: skip
    """The preference result of `model` on the run's eval pairs; None when there are none (or, for the
    `reference` kind after training, no baseline to take the reference log-probs from)."""
    items = eval_pairs(cfg, tokenizer)
    if not items:
        return None
    logps, counts = reply_logps(model, items, cfg.eval.batch_size)
    ref = None
    if kind == "reference":
        ref = reference.metrics["preference"].details["logps"] if reference is not None else logps
        if len(ref) != len(logps):
            raise ValueError(f"the baseline scored {len(ref) // 2} eval pairs, this run has {len(items)}")
    examples = [pair_example(tokenizer, it, i) for i, it in enumerate(items)]
    return score(examples, logps, counts, rewards(kind, beta, logps, counts, ref), name, kind, beta)


def pair_example(tokenizer: Any, item: PairItem, index: int) -> EvalExample:
    """The pair as the report shows it: the prompt, and the chosen reply as the reference (decoded tokens)."""
    ex = item.chosen
    k = next((i for i, lab in enumerate(ex.labels) if lab != IGNORE), len(ex.labels))
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return EvalExample(decode(ex.input_ids[:k]), decode(ex.input_ids[k:]), f"eval pair {index}")


def load(run_dir: Path, which: str) -> EvalResult | None:
    path = run_dir / EVAL_DIR / which
    return EvalResult.load(path) if path.is_file() else None


def summary_line(result: EvalResult) -> str:
    s = result.metrics["preference"].scores
    return (f"preference accuracy {s['preference_accuracy']:.3f}, reward margin {s['reward_margin']:+.4f} "
            f"({result.metrics['preference'].details['pairs']} held-out pairs)")  # fmt: skip


def save(result: EvalResult, run_dir: Path, which: str) -> None:
    result.save(run_dir / EVAL_DIR / which)


def merge_rows(comparison_path: Path, rows: dict[str, Any]) -> None:
    """Add the preference rows to eval/comparison.json (creating it when the run compared nothing else)."""
    cmp = json.loads(comparison_path.read_text()) if comparison_path.is_file() else {"rows": [], "flipped": []}
    cmp.setdefault("name_a", rows["name_a"])
    cmp.setdefault("name_b", rows["name_b"])
    cmp["rows"] += rows["rows"]
    cmp["flipped"] += rows["flipped"]
    comparison_path.write_text(json.dumps(cmp, indent=1, ensure_ascii=False))
