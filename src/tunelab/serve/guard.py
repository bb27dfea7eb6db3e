"""The guard: checks on what goes into and comes out of the model, each with an action.

Rules: `injection` (prompt-injection / jailbreak phrasings in the input), `pii` (input and output, using
the same detectors as the data toolkit, tunelab.quality.pii) and `blocklist` (configured terms, whole
words, case-insensitive). Actions: `off`, `flag` (allow, record), `redact` (replace the span), `block`
(refuse: 400 for input, finish_reason "content_filter" for output). Every decision is returned to the
caller, which logs it and stores it when request logging is on. Decisions carry kinds and counts, never
the matched personal data itself.

Injection patterns are a deliberately small list of well-known phrasings, not a classifier: they catch
the common copy-paste attacks and are easy to extend (`guard.injection_patterns`), nothing more.

Streaming output is checked incrementally by `OutputFilter`: text is released only once it is `HOLD`
characters behind the newest token and not inside a detected span, so a redaction never has to take back
text already sent (a PII span longer than HOLD could slip through split; none of the detected kinds is).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from tunelab.quality.pii import find_pii, redact_pii
from tunelab.serve.config import GuardConfig

log = logging.getLogger("tunelab.serve.guard")

INJECTION_PATTERNS: dict[str, str] = {
    "ignore-instructions": (
        r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|your|system)\b"
        r".{0,20}\b(instructions?|prompts?|rules|guidelines|directions)\b"
    ),
    "reveal-system-prompt": (
        r"\b(reveal|show|print|repeat|leak|output)\b.{0,30}\b(system|hidden|initial)\s+(prompt|instructions?|message)\b"
    ),
    "dan-jailbreak": (
        r"\b(DAN|do anything now)\b.{0,60}\b(mode|jailbreak|no (restrictions|rules|limits))\b"
        r"|\byou are (now )?DAN\b"
    ),
    "developer-mode": r"\b(developer|god|jailbreak|unrestricted|sudo)\s+mode\b",
    "no-restrictions": (
        r"\b(pretend|act|imagine|roleplay)\b.{0,40}\b(no|without)\s+"
        r"(restrictions|filters|rules|limits|guidelines|ethics)\b"
    ),
    "new-instructions": r"^\s*(new|updated)\s+(system\s+)?instructions?\s*:",
}
HOLD = 64


@dataclass(frozen=True)
class Decision:
    stage: str  # "input" | "output"
    rule: str  # "injection" | "pii" | "blocklist"
    action: str  # "flag" | "redact" | "block"
    detail: str  # pattern names, PII kinds with counts, or the blocked terms

    def as_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "rule": self.rule, "action": self.action, "detail": self.detail}


class Guard:
    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        patterns = {**INJECTION_PATTERNS, **{f"custom-{i}": p for i, p in enumerate(cfg.injection_patterns)}}
        self.injection = {name: re.compile(p, re.IGNORECASE | re.MULTILINE) for name, p in patterns.items()}
        terms = "|".join(re.escape(t) for t in cfg.blocklist if t.strip())
        self.blocklist = re.compile(rf"(?<!\w)({terms})(?!\w)", re.IGNORECASE) if terms else None

    def check(self, text: str, stage: str) -> tuple[str, list[Decision]]:
        """(possibly redacted text, decisions); a block is a decision with action "block"."""
        decisions: list[Decision] = []
        if stage == "input" and self.cfg.injection != "off":
            text = self._injection(text, decisions)
        pii_action = self.cfg.pii_input if stage == "input" else self.cfg.pii_output
        if pii_action != "off":
            text = self._pii(text, stage, pii_action, decisions)
        if self.blocklist is not None and self.cfg.blocklist_action != "off":
            text = self._blocked(text, stage, decisions)
        for d in decisions:
            log.info("guard %s %s %s: %s", d.stage, d.rule, d.action, d.detail)
        return text, decisions

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Output spans that a redaction could touch (PII and blocklist matches)."""
        out = []
        if self.cfg.pii_output != "off":
            out += [(f.start, f.end) for f in find_pii(text, self.cfg.pii_kinds)]
        if self.blocklist is not None and self.cfg.blocklist_action != "off":
            out += [m.span() for m in self.blocklist.finditer(text)]
        return out

    def _injection(self, text: str, decisions: list[Decision]) -> str:
        hits = [(name, rx) for name, rx in self.injection.items() if rx.search(text)]
        if hits:
            decisions.append(Decision("input", "injection", self.cfg.injection, ",".join(n for n, _ in hits)))
            if self.cfg.injection == "redact":
                for _, rx in hits:
                    text = rx.sub("[REMOVED]", text)
        return text

    def _pii(self, text: str, stage: str, action: str, decisions: list[Decision]) -> str:
        found = find_pii(text, self.cfg.pii_kinds)
        if not found:
            return text
        kinds: dict[str, int] = {}
        for f in found:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        decisions.append(Decision(stage, "pii", action, ",".join(f"{k}:{n}" for k, n in sorted(kinds.items()))))
        return redact_pii(text, self.cfg.pii_kinds)[0] if action == "redact" else text

    def _blocked(self, text: str, stage: str, decisions: list[Decision]) -> str:
        assert self.blocklist is not None
        terms = sorted({m.group(0).lower() for m in self.blocklist.finditer(text)})
        if not terms:
            return text
        decisions.append(Decision(stage, "blocklist", self.cfg.blocklist_action, ",".join(terms)))
        return self.blocklist.sub("[BLOCKED]", text) if self.cfg.blocklist_action == "redact" else text


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
        cut = max(self.released, len(self.raw) - HOLD)
        for start, end in self.guard.spans(self.raw):
            if start < cut < end:
                cut = max(self.released, start)
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
        text, decisions = self.guard.check(segment, "output")
        self.decisions += decisions
        if blocked(decisions):
            self.blocked = True
            return ""
        return text
