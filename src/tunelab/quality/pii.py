"""PII and secret detection: emails, phone numbers, payment cards, IBANs, IP addresses, API keys.

Each detector is a regex that proposes candidates plus a validator that confirms them, so checksummed
kinds are precise: a card must pass the Luhn check, an IBAN the ISO 13616 mod-97 check, an IP address
must parse with `ipaddress`. Phone numbers have no checksum; to avoid flagging years, dates, prices and
order numbers a candidate needs a leading `+` (8-15 digits) or a national shape (9-12 digits with a
separator, parentheses or a leading trunk 0). Generic `api_key=...` / `Bearer ...` values count only when
they look random (letters and digits, Shannon entropy >= 3 bits/char), so placeholders like
`YOUR_API_KEY` pass. Overlapping candidates are resolved by kind priority (secret > email > iban > card >
ip > phone), then by length, so a card number is never also reported as a phone number.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tunelab.config import PII_KINDS
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    text: str


_PRIORITY = {"secret": 0, "email": 1, "iban": 2, "card": 3, "ip": 4, "phone": 5}

# --------------------------------------------------------------------------- validators


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, the number mod 97 is 1."""
    iban = iban.replace(" ", "").upper()
    if not (15 <= len(iban) <= 34) or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def shannon_entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values()) if s else 0.0


def _random_looking(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and shannon_entropy(value) >= 3.0


# --------------------------------------------------------------------------- candidate patterns

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])")  # fmt: skip
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])")
# A leading + means an international phone number, never a card.
# Printed IBANs come in groups of four; candidates are trimmed group by group until the checksum holds,
# so a capitalised word right after an IBAN is not swallowed.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:|\d{1,3}(?:\.\d{1,3}){3})(?![\w:])")
_PHONE = re.compile(r"(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d+(?:[ .-]\d+){0,5}(?![\w/]|[.-]\d)")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}|^\d{1,2}[-./]\d{1,2}[-./]\d{4}")

_SECRETS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub classic tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}\b"),  # GitHub fine-grained tokens
    re.compile(r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"),  # OpenAI (and Anthropic) keys
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API keys
    re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----(?:[\s\S]*?-----END \1-----)?"),  # PEM keys
]
# Generic assignments and bearer tokens: group 1 is the value; only random-looking values count.
_GENERIC = [
    re.compile(
        r"(?i)\b(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?(?:key|token)|auth[_-]?token|token|"
        r"password|passwd|client[_-]?secret)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-./+=]{16,})"
    ),
    re.compile(r"(?i)\bbearer\s+([A-Za-z0-9_\-.=+/]{20,})"),
]


def _emails(text: str) -> Iterable[tuple[int, int]]:
    return (m.span() for m in _EMAIL.finditer(text))


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
            yield m.span()


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        candidate = m.group()
        while len(candidate.replace(" ", "")) >= 15:
            if iban_ok(candidate):
                yield m.start(), m.start() + len(candidate)
                break
            candidate = candidate[:-1].rstrip()


def _ips(text: str) -> Iterable[tuple[int, int]]:
    yield from (m.span() for m in _IPV4.finditer(text))
    for m in _IPV6.finditer(text):
        if any(c.isalnum() for c in m.group()):
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            yield m.span()


def _phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE.finditer(text):
        s = m.group()
        digits = re.sub(r"\D", "", s)
        if _DATE.match(s):
            continue
        if s.startswith("+"):
            ok = 8 <= len(digits) <= 15
        else:
            shaped = "(" in s or bool(re.search(r"\d[ .-]\d", s)) or s.startswith("0")
            ok = 9 <= len(digits) <= 12 and shaped
        if ok:
            yield m.span()


def _secrets(text: str) -> Iterable[tuple[int, int]]:
    for pattern in _SECRETS:
        yield from (m.span() for m in pattern.finditer(text))
    for pattern in _GENERIC:
        for m in pattern.finditer(text):
            if _random_looking(m.group(1)):
                yield m.span(1)


_DETECTORS: dict[str, Callable[[str], Iterable[tuple[int, int]]]] = {
    "email": _emails,
    "phone": _phones,
    "card": _cards,
    "iban": _ibans,
    "ip": _ips,
    "secret": _secrets,
}

# --------------------------------------------------------------------------- API


def _kinds(kinds: Iterable[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return PII_KINDS
    chosen = tuple(kinds)
    if unknown := [k for k in chosen if k not in _DETECTORS]:
        raise TunelabError(f"unknown PII kind(s) {', '.join(unknown)}; expected some of: {', '.join(PII_KINDS)}")
    return chosen


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[PiiFinding]:
    """Every PII span in `text`, in order, without overlaps."""
    candidates = [(s, e, k) for k in _kinds(kinds) for s, e in _DETECTORS[k](text) if e > s]
    candidates.sort(key=lambda c: (_PRIORITY[c[2]], -(c[1] - c[0]), c[0]))
    taken: list[tuple[int, int, str]] = []
    for s, e, k in candidates:
        if all(e <= ts or s >= te for ts, te, _ in taken):
            taken.append((s, e, k))
    return [PiiFinding(k, s, e, text[s:e]) for s, e, k in sorted(taken)]


def redact_pii(text: str, kinds: Iterable[str] | None = None) -> tuple[str, list[PiiFinding]]:
    """`text` with each finding replaced by its placeholder ([EMAIL], [PHONE], ...), and the findings."""
    findings = find_pii(text, kinds)
    out, pos = [], 0
    for f in findings:
        out += [text[pos : f.start], f"[{f.kind.upper()}]"]
        pos = f.end
    out.append(text[pos:])
    return "".join(out), findings
