"""`tunelab data inspect`: what is in a data file, in numbers.

Per file: record counts (valid and not), record types, roles and turns per conversation, empty or
whitespace-only text fields, the label distribution when there is a label column, and the length
distribution: in tokens of the given tokenizer when there is one (conversations rendered with its chat
template, as training sees them), else in characters. With a max length, the records that would be
truncated are listed. The histogram is drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.data.records import (
    Conversation,
    Labelled,
    Preference,
    Prompt,
    PromptCompletion,
    Record,
    Text,
    TokenTags,
    UnpairedPreference,
    message_dict,
    message_text,
    tool_schemas,
)
from tunelab.quality.items import Dataset, Item


def inspect_dataset(ds: Dataset, tokenizer: Any = None, max_length: int | None = None) -> dict[str, Any]:
    valid = ds.valid
    seen = Seen()
    for start in range(0, len(valid), CHUNK):  # one pass, a chunk of records at a time: memory stays flat
        seen.add([it.record for it in valid[start : start + CHUNK]], tokenizer)
    lengths = seen.lengths
    stats: dict[str, Any] = {
        "path": ds.path,
        "role": ds.role,
        "format": ds.format,
        "records": len(ds.items),
        "valid": len(valid),
        "invalid": len(ds.items) - len(valid),
        "record_types": dict(seen.types),
        "length_unit": "tokens" if tokenizer is not None else "chars",
        "length": summarize(lengths),
        "empty_fields": [{**it.location(), "field": f} for it, f in empty_fields(ds.items)],
    }
    stats.update(seen.conversation_stats())
    if ds.label_column:
        labels = Counter(it.label for it in valid if it.label is not None)
        stats["label_column"] = ds.label_column
        stats["labels"] = dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])))
        stats["missing_labels"] = sum(1 for it in valid if it.label is None)
    if max_length is not None:
        over = [(it, n) for it, n in zip(valid, lengths, strict=False) if n > max_length]
        stats["max_length"] = max_length
        stats["truncated"] = [{**it.location(), "length": n} for it, n in over]
    stats["_lengths"] = lengths  # kept for the histogram; dropped from JSON output
    return stats


CHUNK = 1024  # records rendered (and tokenized) together


class Seen:
    """What inspect counts, added a chunk of records at a time: record types, lengths, turns and roles."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.lengths: list[int] = []
        self.turns: Counter[int] = Counter()
        self.roles: Counter[str] = Counter()

    def add(self, records: list[Record | None], tokenizer: Any = None) -> None:
        present = [r for r in records if r is not None]
        self.types.update(type(r).__name__ for r in present)
        self.lengths += measure(present, tokenizer)
        for r in present:
            if msgs := _messages(r):
                self.turns[len(msgs)] += 1
                self.roles.update(m.role for m in msgs)

    def conversation_stats(self) -> dict[str, Any]:
        if not self.turns:
            return {}
        n = sum(self.turns.values())
        mean = round(sum(k * v for k, v in self.turns.items()) / n, 2)
        counts = dict(sorted(self.turns.items()))
        return {
            "roles": dict(self.roles),
            "turns": {"min": min(self.turns), "mean": mean, "max": max(self.turns), "counts": counts},
        }


# Fields that formats treat as optional and that real data leaves empty on purpose (alpaca's "input" is
# empty in about half of all alpaca rows): an empty one is not a problem worth a warning.
OPTIONAL_FIELDS = {"input", "system"}


def empty_fields(items: list[Item]) -> list[tuple[Item, str]]:
    return [
        (it, path)
        for it in items
        if it.error is None
        for path, text in it.fields.items()
        if not text.strip() and path not in OPTIONAL_FIELDS
    ]


def _messages(record: Record | None) -> tuple[Any, ...]:
    if isinstance(record, Conversation):
        return record.messages
    if isinstance(record, Preference):
        return record.prompt + record.chosen
    if isinstance(record, UnpairedPreference):
        return record.prompt + record.completion
    if isinstance(record, Prompt):
        return record.messages
    return ()


def measure(records: list[Record], tokenizer: Any = None) -> list[int]:
    """Length of each record: tokens as training would see them, or characters without a tokenizer."""
    texts = [render(r, tokenizer) for r in records]
    if tokenizer is None:
        return [len(t) for t in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def render(record: Record, tokenizer: Any = None) -> str:
    msgs = _messages(record)
    if isinstance(record, Preference):  # the longer side is what has to fit
        longer = max((record.chosen, record.rejected), key=lambda s: sum(len(message_text(m)) for m in s))
        msgs = record.prompt + longer
    if msgs:
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            tools = tool_schemas(getattr(record, "tools", ()))  # tool calls and tools count, as in training
            extra = {"tools": tools} if tools else {}
            return tokenizer.apply_chat_template([message_dict(m) for m in msgs], tokenize=False, **extra)
        return "\n".join(message_text(m) for m in msgs)
    if isinstance(record, PromptCompletion):
        return record.prompt + record.completion
    if isinstance(record, Labelled):
        return record.text
    if isinstance(record, TokenTags):
        return " ".join(record.tokens)
    assert isinstance(record, Text)
    return record.text


def summarize(values: list[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    s = sorted(values)

    def pct(p: float) -> int:
        return s[min(len(s) - 1, int(p / 100 * len(s)))]

    mean = round(statistics.fmean(s), 1)
    return {
        "count": len(s),
        "min": s[0],
        "mean": mean,
        **{f"p{p}": pct(p) for p in (50, 90, 95, 99)},
        "max": s[-1],
    }


def plot_lengths(stats: list[dict[str, Any]], path: str | Path, max_length: int | None = None) -> Path:
    """One histogram of record lengths, one series per file, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for s in stats:
        if s["_lengths"]:
            ax.hist(s["_lengths"], bins=50, alpha=0.6, label=f"{Path(s['path']).name} ({s['role']})")
    if max_length is not None:
        ax.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    unit = stats[0]["length_unit"] if stats else "chars"
    ax.set(xlabel=f"length ({unit})", ylabel="records", title="Record length distribution")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def public(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats without internal keys, ready for JSON."""
    return {k: v for k, v in stats.items() if not k.startswith("_")}
