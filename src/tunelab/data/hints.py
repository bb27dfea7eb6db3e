"""What to suggest when a file does not fit: the format and `columns:` mapping its fields most likely mean.

`mapping_hint` matches each field a format needs but the row lacks to a field the row has, by name (case
ignored) or by a common synonym (sentence, review, utterance -> text; sentiment, intent, topic -> label;
question -> prompt; answer -> completion; ...). A suggestion is made only when every missing field finds a
distinct match, so it is never half a mapping: "fields present: sentence, sentiment; did you mean
`columns: {text: sentence, label: sentiment}`?". With format auto, the format is suggested too.
"""

from __future__ import annotations

from collections.abc import Iterable

# The fields a format cannot do without (its other fields are optional).
REQUIRED: dict[str, tuple[str, ...]] = {
    "labelled": ("text", "label"), "token_tags": ("tokens", "tags"), "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"), "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"), "messages": ("messages",), "sharegpt": ("conversations",),
    "transcript": ("chosen", "rejected"), "text": ("text",), "prompt": ("prompt",),
}  # fmt: skip
SYNONYMS: dict[str, tuple[str, ...]] = {
    "text": ("sentence", "content", "document", "review", "body", "utterance", "description", "passage", "article",
             "tweet", "comment", "text_a", "input", "question", "query", "dialogue"),
    "label": ("sentiment", "category", "class", "intent", "target", "labels", "topic", "label_text", "coarse_label",
              "fine_label", "polarity", "rating", "y"),
    "tokens": ("words", "token", "word"), "tags": ("ner_tags", "ner", "labels", "tag", "entities"),
    "prompt": ("question", "input", "instruction", "query", "dialogue", "context", "source", "problem"),
    "completion": ("answer", "output", "response", "summary", "target", "reply", "solution"),
    "instruction": ("question", "prompt", "query", "input", "problem"),
    "output": ("answer", "response", "completion", "summary", "target", "solution"),
    "chosen": ("preferred", "accepted", "good", "winner", "response_chosen", "chosen_response"),
    "rejected": ("dispreferred", "bad", "loser", "response_rejected", "rejected_response"),
    "messages": ("conversation", "dialog", "turns", "chat"), "conversations": ("conversation", "dialog", "turns"),
}  # fmt: skip


def mapping(fmt: str, keys: Iterable[str]) -> dict[str, str] | None:
    """{format field: your field} for every required field `keys` lack, or None when one finds no match."""
    present = list(keys)
    lower = {k.lower(): k for k in present}
    out: dict[str, str] = {}
    for need in REQUIRED.get(fmt, ()):
        if need in present:
            continue
        taken = set(out.values())
        found = next((lower[c] for c in (need, *SYNONYMS.get(need, ())) if c in lower and lower[c] not in taken), None)
        if found is None or found in REQUIRED.get(fmt, ()):
            return None
        out[need] = found
    return out


def best_format(keys: Iterable[str]) -> tuple[str, dict[str, str]] | None:
    """The format whose required fields all map onto `keys`, the one that uses the most fields."""
    present = list(keys)
    fits: list[tuple[str, dict[str, str]]] = []
    for fmt in REQUIRED:
        if (found := mapping(fmt, present)) is not None:
            fits.append((fmt, found))
    fits.sort(key=lambda f: -len(REQUIRED[f[0]]))  # stable: REQUIRED's order breaks ties
    return fits[0] if fits else None


def columns_text(m: dict[str, str]) -> str:
    return "columns: {" + ", ".join(f"{k}: {v}" for k, v in m.items()) + "}"


def mapping_hint(fmt: str | None, keys: Iterable[str]) -> str:
    """'; did you mean `columns: {text: sentence}`?' (with `format: X, ` when fmt is None or auto), or ''."""
    present = list(keys)
    if fmt in (None, "auto"):
        best = best_format(present)
        if best is None:
            return ""
        name, m = best
        return f"; did you mean `format: {name}" + (f", {columns_text(m)}`?" if m else "`?")
    found = mapping(fmt, present)
    return f"; did you mean `{columns_text(found)}`?" if found else ""
