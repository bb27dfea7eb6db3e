"""The guard: checks on what goes into and comes out of the model, each with an action.

Rules: `injection` (prompt-injection / jailbreak phrasings, injection.py, plus an optional classifier),
`pii` (input and output, the data toolkit's detectors, tunelab.quality.pii) and `blocklist` (configured
terms, whole words, case-insensitive). Actions: `off`, `flag` (allow, record; the default for injection),
`redact` (replace the span), `block` (refuse: 400 for input, finish_reason "content_filter" for output).
Every decision is returned to the caller, which counts, logs and stores it. Decisions carry pattern names,
kinds and counts, never the matched personal data.

Everything is matched on normalized text (normalize.py): an input is every message of every role (a
client's system message, an assistant turn, a tool result) checked alone and then all joined, so a phrase
split across two messages is caught too. PII is looked for in a view without invisible characters, with
NFKC (fullwidth `＠`) and with whitespace inside digit runs collapsed, and IBANs case-insensitively; when
anything is found the text is redacted on that view (so the stored or model-facing text is the
normalized one), otherwise it is left exactly as written. An unterminated PEM private key block counts as
a secret up to the end of the text.

Streaming output goes through `OutputFilter`: text is released only once it is `stream_hold_chars` behind
the newest token and not inside a detected span, and nothing after an opened private-key block is released
until the block ends, so a multi-line secret is redacted whole and a redaction never takes back sent text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tunelab.quality.pii import find_pii
from tunelab.serve.config import GuardConfig
from tunelab.serve.injection import ClassifierDetector, PatternDetector
from tunelab.serve.normalize import normalize, pii_view, variants

log = logging.getLogger("tunelab.serve.guard")

_PEM_OPEN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")


@dataclass(frozen=True)
class Decision:
    stage: str  # "input" | "output"
    rule: str  # "injection" | "pii" | "blocklist"
    action: str  # "flag" | "redact" | "block"
    detail: str  # pattern names, PII kinds with counts, or the blocked terms

    def as_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "rule": self.rule, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int


class Guard:
    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        on = cfg.injection != "off"
        self.patterns = PatternDetector(cfg.injection_patterns) if on else None
        self.classifier = ClassifierDetector(cfg.classifier) if on and cfg.classifier else None
        terms = "|".join(re.escape(t) for t in cfg.blocklist if t.strip())
        self.blocklist = re.compile(rf"(?<!\w)({terms})(?!\w)", re.IGNORECASE) if terms else None

    @property
    def slow(self) -> bool:
        """A classifier model runs in the input check: call it off the event loop."""
        return self.classifier is not None

    # ------------------------------------------------------------------ checks

    def check(self, text: str, stage: str) -> tuple[str, list[Decision]]:
        """(possibly redacted text, decisions) for one text; a block is a decision with action "block"."""
        if stage == "input":
            texts, decisions = self.check_input([text])
            return texts[0], decisions
        return self.check_output(text)

    def check_input(self, texts: list[str]) -> tuple[list[str], list[Decision]]:
        """Every message of a conversation (any role) or every prompt of a request, checked together."""
        decisions: list[Decision] = []
        if self.patterns is not None:
            texts = self._injection(texts, decisions)
        if self.cfg.pii_input != "off":
            texts = self._pii(texts, "input", self.cfg.pii_input, decisions)
        if self.blocklist is not None and self.cfg.blocklist_action != "off":
            texts = self._blocked(texts, "input", decisions)
        return texts, _logged(decisions)

    def check_output(self, text: str) -> tuple[str, list[Decision]]:
        decisions: list[Decision] = []
        if self.cfg.pii_output != "off":
            text = self._pii([text], "output", self.cfg.pii_output, decisions)[0]
        if self.blocklist is not None and self.cfg.blocklist_action != "off":
            text = self._blocked([text], "output", decisions)[0]
        return text, _logged(decisions)

    # ------------------------------------------------------------------ spans and redaction

    def pii_spans(self, text: str) -> tuple[str, list[int], list[Span]]:
        """(PII view of `text`, view -> text index map, spans in the view), without overlaps."""
        view, where = pii_view(text)
        kinds = self.cfg.pii_kinds
        found = [Span(f.kind, f.start, f.end) for f in find_pii(view, kinds)]
        if kinds is None or "iban" in kinds:  # printed IBANs are upper case; typed ones often are not
            found += [Span(f.kind, f.start, f.end) for f in find_pii(_upper(view), ["iban"])]
        if kinds is None or "secret" in kinds:
            found += [
                Span("secret", m.start(), len(view))
                for m in _PEM_OPEN.finditer(view)
                if f"-----END {m.group(1)}-----" not in view[m.end() :]
            ]
        return view, where, _disjoint(found)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Output spans (in `text`) that a redaction could touch: PII and blocklist matches."""
        out = []
        if self.cfg.pii_output != "off":
            view, where, found = self.pii_spans(text)
            out += [(where[s.start], where[s.end - 1] + 1) for s in found]
        if self.blocklist is not None and self.cfg.blocklist_action != "off":
            out += [m.span() for m in self.blocklist.finditer(text)]
        return out

    def redact_pii(self, text: str) -> tuple[str, list[Span]]:
        """`text` with each PII span replaced by its placeholder ([EMAIL], ...); unchanged when none."""
        view, _, found = self.pii_spans(text)
        if not found:
            return text, []
        out, pos = [], 0
        for s in found:
            out += [view[pos : s.start], f"[{s.kind.upper()}]"]
            pos = s.end
        return "".join(out) + view[pos:], found

    def redact_record(self, value: Any) -> Any:
        """Every string inside a JSON-like value, PII-redacted (what the store writes)."""
        if isinstance(value, str):
            return self.redact_pii(value)[0]
        if isinstance(value, list):
            return [self.redact_record(v) for v in value]
        if isinstance(value, dict):
            return {k: self.redact_record(v) for k, v in value.items()}
        return value

    # ------------------------------------------------------------------ rules

    def _injection(self, texts: list[str], decisions: list[Decision]) -> list[str]:
        assert self.patterns is not None
        action, joined = self.cfg.injection, " ".join(normalize(t) for t in texts if t)
        hits = {name for t in texts if t for name in self.patterns.find(t)}
        split = not hits and len(texts) > 1 and bool(self.patterns.find(joined))  # a phrase split across messages
        if split:
            hits = set(self.patterns.find(joined))
        model = self.classifier.find(joined) if self.classifier is not None else []  # the whole conversation
        if not hits and not model:
            return texts
        detail = ",".join([*sorted(hits), *model]) + (" (across messages)" if split else "")
        if action == "redact" and (split or not hits):
            action = "flag"  # no one message holds a phrase to cut out
        decisions.append(Decision("input", "injection", action, detail))
        return [self._remove(t) for t in texts] if action == "redact" else texts

    def _remove(self, text: str) -> str:
        assert self.patterns is not None
        for rx in self.patterns.raw_matches(text):
            text = rx.sub("[REMOVED]", text)
        return "[REMOVED]" if self.patterns.find(text) else text  # only a disguised view matched: drop it all

    def _pii(self, texts: list[str], stage: str, action: str, decisions: list[Decision]) -> list[str]:
        out, kinds = [], dict[str, int]()
        for t in texts:
            redacted, found = self.redact_pii(t)
            for s in found:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            out.append(redacted if action == "redact" else t)
        if kinds:
            detail = ",".join(f"{k}:{n}" for k, n in sorted(kinds.items()))
            decisions.append(Decision(stage, "pii", action, detail))
        return out

    def _blocked(self, texts: list[str], stage: str, decisions: list[Decision]) -> list[str]:
        assert self.blocklist is not None
        rx, action, out = self.blocklist, self.cfg.blocklist_action, []
        terms: set[str] = set()
        for t in texts:
            seen = {m.group(0).lower() for v in [t, *variants(t)] for m in rx.finditer(v)}
            terms |= seen
            if seen and action == "redact":
                t = next((rx.sub("[BLOCKED]", v) for v in (t, normalize(t)) if rx.search(v)), "[BLOCKED]")
            out.append(t)
        if terms:
            decisions.append(Decision(stage, "blocklist", action, ",".join(sorted(terms))))
        return out


def _upper(text: str) -> str:
    """Upper case that keeps every index (characters whose upper case is longer stay as they are)."""
    return "".join(u if len(u := c.upper()) == 1 else c for c in text)


def _disjoint(spans: Iterable[Span]) -> list[Span]:
    taken: list[Span] = []
    for s in sorted(spans, key=lambda s: (-(s.end - s.start), s.start)):  # longest first
        if all(s.end <= t.start or s.start >= t.end for t in taken):
            taken.append(s)
    return sorted(taken, key=lambda s: s.start)


def _logged(decisions: list[Decision]) -> list[Decision]:
    for d in decisions:
        log.info("guard %s %s %s: %s", d.stage, d.rule, d.action, d.detail)
    return decisions


def blocked(decisions: list[Decision]) -> Decision | None:
    return next((d for d in decisions if d.action == "block"), None)


class OutputFilter:
    """Incremental output guard for streaming: feed raw deltas, get back text that is safe to send."""

    def __init__(self, guard: Guard) -> None:
        self.guard, self.raw, self.released = guard, "", 0
        self.decisions: list[Decision] = []
        self.blocked = False

    @property
    def active(self) -> bool:
        g = self.guard
        return g.cfg.pii_output != "off" or (g.blocklist is not None and g.cfg.blocklist_action != "off")

    def feed(self, delta: str) -> str:
        self.raw += delta
        if not self.active:
            return self._release(len(self.raw))
        cut = max(self.released, len(self.raw) - self.guard.cfg.stream_hold_chars)
        # Only the text near what is unreleased can hold a span across `cut` (an open private-key block
        # starts after `released`, which never passes it): scanning a window keeps a long stream linear.
        window = max(0, self.released - 256)
        for start, end in self.guard.spans(self.raw[window:]):  # an open key block spans to the end: held
            if window + start < cut < window + end:
                cut = max(self.released, window + start)
        return self._release(cut)

    def finish(self) -> str:
        return self._release(len(self.raw))

    def _release(self, cut: int) -> str:
        if self.blocked or cut <= self.released:
            return ""
        segment = self.raw[self.released : cut]
        self.released = cut
        if not self.active:
            return segment
        text, decisions = self.guard.check_output(segment)
        self.decisions += decisions
        if blocked(decisions):
            self.blocked = True
            return ""
        return text
