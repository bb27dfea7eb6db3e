"""Read a class label out of a generated answer: a regex group, a JSON field, the first line, or a label set.

Extraction returns None when nothing usable is found; callers count those outputs as "unparseable" and
never drop them. With a closed label set every extracted string is mapped onto the set (case-insensitive by
default, surrounding punctuation ignored), and a string outside the set is unparseable too, so a typo in
the model's output cannot create a new class.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

UNPARSEABLE = "<unparseable>"
LAST_NUMBER = "last_number"
_NUMBER = re.compile(r"[-−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d,]*\d)")
EXTRACT_METHODS = ("regex", "json", "first_line", "label_set")
_EDGE_PUNCT = " \t\r\n.,;:!?\"'`*()[]{}<>"


def extract_label(
    text: str,
    method: str = "first_line",
    *,
    pattern: str | None = None,
    field: str = "label",
    labels: Sequence[str] | None = None,
    case_sensitive: bool = False,
) -> str | None:
    """The label in `text`, or None when it cannot be read (or is outside `labels`)."""
    if method == "regex":
        if not pattern:
            raise ValueError("extract method 'regex' needs a pattern")
        raw = _by_regex(text, pattern, case_sensitive)
    elif method == "json":
        raw = _by_json(text, field)
    elif method == "first_line":
        raw = next((line for line in text.splitlines() if line.strip()), None)
    elif method == "label_set":
        if not labels:
            raise ValueError("extract method 'label_set' needs labels")
        return _by_label_set(text, labels, case_sensitive)
    else:
        raise ValueError(f"unknown extract method {method!r}; expected one of: {', '.join(EXTRACT_METHODS)}")
    if raw is None:
        return None
    raw = raw.strip(_EDGE_PUNCT)
    if not raw:
        return None
    return _canonical(raw, labels, case_sensitive) if labels else raw


def _by_regex(text: str, pattern: str, case_sensitive: bool) -> str | None:
    m = re.search(pattern, text, 0 if case_sensitive else re.IGNORECASE)
    if m is None:
        return None
    if "label" in m.groupdict():
        return m.group("label")
    return m.group(1) if m.re.groups else m.group(0)


def _by_json(text: str, field: str) -> str | None:
    obj = find_json(text)
    if not isinstance(obj, dict) or field not in obj or isinstance(obj[field], (dict, list)) or obj[field] is None:
        return None
    return str(obj[field])


def _canonical(raw: str, labels: Sequence[str], case_sensitive: bool) -> str | None:
    fold = (lambda s: s) if case_sensitive else str.casefold
    by_key = {fold(lab): lab for lab in labels}
    return by_key.get(fold(raw))


def _by_label_set(text: str, labels: Sequence[str], case_sensitive: bool) -> str | None:
    """The whole answer if it is a label; otherwise the label that occurs first as a whole word.

    Longer labels win ties at the same position, so "not spam" beats "spam" in "not spam".
    """
    whole = _canonical(text.strip(_EDGE_PUNCT), labels, case_sensitive)
    if whole is not None:
        return whole
    flags = 0 if case_sensitive else re.IGNORECASE
    best: tuple[int, int, str] | None = None
    for lab in labels:
        m = re.search(rf"(?<!\w){re.escape(lab)}(?!\w)", text, flags)
        if m and (best is None or (m.start(), -len(lab)) < (best[0], best[1])):
            best = (m.start(), -len(lab), lab)
    return best[2] if best else None


def extract_answer(text: str, how: str) -> str | None:
    """The final answer in `text`: the last number (`last_number`), or what a regex finds (its group `answer`,
    else group 1, else the whole match; the LAST match, as an answer follows its working); None when absent."""
    if how == LAST_NUMBER:
        found = _NUMBER.findall(text)
        return found[-1] if found else None
    try:
        matches = list(re.finditer(how, text))  # `.` stops at a line end: one answer per match
    except re.error as e:
        raise ValueError(f"answer pattern {how!r} is not a valid regex: {e}") from None
    if not matches:
        return None
    m = matches[-1]
    value = m.group("answer") if "answer" in m.groupdict() else m.group(1) if m.re.groups else m.group(0)
    return value.strip() if value is not None else None


def as_number(text: str) -> float | None:
    """`text` as a number when it is one: '1,000' -> 1000.0, '$72.50' -> 72.5, '-3.' -> -3.0; else None."""
    cleaned = text.strip().replace("−", "-").replace("$", "").rstrip(".").strip()
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", cleaned) is None:
        return None
    return float(cleaned.replace(",", ""))


def same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def find_json(text: str) -> Any:
    """The first JSON value in `text`: the whole string, a ```json fence, or the first parseable {...}/[...].

    Returns None when there is none (JSON `null` itself is treated as no value, which no caller needs).
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    fence = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.DOTALL | re.IGNORECASE)
    if fence:
        try:
            return json.loads(fence.group(1))
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
            return value
        except json.JSONDecodeError:
            continue
    return None
