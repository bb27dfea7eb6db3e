"""Review queue items -> training rows of three kinds, each with its provenance.

The three files use one layout, tunelab's prompt/completion formats (docs/data.md), so a row reads the same
whatever its kind: `prompt` is the conversation before the answer (a message list) or the plain prompt of a
/v1/completions request, and

- sft:        {prompt, completion}            an approved answer, or the reviewer's edited answer
- preference: {prompt, chosen, rejected}      an edit (edited over original); per identical prompt, a good
                                              answer over a bad one
- kto:        {prompt, completion, label}     approvals and edits true; rejections and the originals of edits
                                              false; with ratings, unreviewed answers rated +1/-1

"Good" is approved, edited (the edit) or, with ratings, rated +1 by the user and not reviewed; "bad" is
rejected, the original of an edit, or rated -1 and not reviewed. A user's own corrected answer enters only
through a reviewer (who may take it as the edit). Every row carries `provenance`: request id, model, adapter,
source (review or rating), reviewer and decision time (reviews), rating (ratings), and when it was asked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

KINDS = ("sft", "preference", "kto")


@dataclass
class Skipped:
    """Items that give no row, by reason (counted in the export's manifest)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


@dataclass(frozen=True)
class Verdict:
    """One answer to one prompt, judged good or bad, with where the judgement came from."""

    prompt: Any
    answer: str
    good: bool
    provenance: dict[str, Any]


def prompt_of(item: dict[str, Any]) -> Any | None:
    """The prompt as a row keeps it, or None when it cannot be a training row (tools, several prompts)."""
    prompt = item["prompt"]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if any(m.get("role") == "tool" or m.get("tool_calls") for m in prompt):
            return None  # tool use: not exported yet
        return [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    return prompt if isinstance(prompt, str) else None


def verdicts(item: dict[str, Any], ratings: bool, skipped: Skipped) -> list[Verdict]:
    """What one item says: good and bad answers to its prompt."""
    prompt, answer, review = prompt_of(item), item["answer"], item["review"]
    if prompt is None:
        skipped.add("unsupported_prompt")
        return []
    base = {"request_id": item["request_id"], "model": item["model"], "adapter": item["adapter"],
            "asked_at": item["created_at"]}  # fmt: skip
    decision = review["decision"] if review else None
    if decision in ("approve", "edit", "reject"):
        assert review is not None
        prov = base | {"source": "review", "decision": decision, "reviewer": review["reviewer"],
                       "decided_at": review["decided_at"]}  # fmt: skip
        if decision == "approve":
            return [Verdict(prompt, answer or "", True, prov)] if answer else _none(skipped, "empty_answer")
        if decision == "reject":
            return [Verdict(prompt, answer, False, prov)] if answer else _none(skipped, "empty_answer")
        out = [Verdict(prompt, review["answer"], True, prov)]
        return out + ([Verdict(prompt, answer, False, prov)] if answer and answer != review["answer"] else [])
    if ratings and item["rating"] in (-1, 1) and answer:
        prov = base | {"source": "rating", "rating": item["rating"]}
        return [Verdict(prompt, answer, item["rating"] == 1, prov)]
    skipped.add("skipped" if decision == "skip" else "not_reviewed")
    return []


def _none(skipped: Skipped, reason: str) -> list[Verdict]:
    skipped.add(reason)
    return []


def prompt_key(prompt: Any) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build_rows(judged: list[Verdict]) -> dict[str, list[dict[str, Any]]]:
    """Rows of each kind from every verdict (in the items' order)."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for v in judged:
        if v.good and v.provenance["source"] == "review":  # sft only from what a person approved or wrote
            rows["sft"].append({"prompt": v.prompt, "completion": v.answer, "provenance": v.provenance})
        rows["kto"].append({"prompt": v.prompt, "completion": v.answer, "label": v.good, "provenance": v.provenance})
    rows["preference"] = preference_rows(judged)
    return rows


def preference_rows(judged: list[Verdict]) -> list[dict[str, Any]]:
    """Every good answer over every different bad answer to the same prompt (an edit's pair included)."""
    by_prompt: dict[str, list[Verdict]] = {}
    for v in judged:
        by_prompt.setdefault(prompt_key(v.prompt), []).append(v)
    out = []
    for group in by_prompt.values():
        seen: set[tuple[str, str]] = set()
        for good in (v for v in group if v.good):
            for bad in (v for v in group if not v.good):
                if good.answer == bad.answer or (good.answer, bad.answer) in seen:
                    continue
                seen.add((good.answer, bad.answer))
                prov = {"chosen": good.provenance, "rejected": bad.provenance}
                out.append({"prompt": good.prompt, "chosen": good.answer, "rejected": bad.answer, "provenance": prov})
    return out
