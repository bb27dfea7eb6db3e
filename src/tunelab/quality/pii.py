"""PII and secret detection: emails, phone numbers, payment cards, IBANs, IP addresses, API keys, street addresses
and names (rules), plus an optional NER backend for names and places (Presidio, when installed).

Each detector is a regex that proposes candidates plus a validator that confirms them, so checksummed kinds are
precise: a card must pass the Luhn check, carry a card network's prefix and be grouped as cards are printed; an
IBAN must pass ISO 13616 mod-97; an IP address must parse with `ipaddress` and not read as a version number
(`v1.2.3.4`, "version 10.0.0.1"). Phone numbers have no checksum, so a candidate must have a phone's shape: a
leading `+` (8-15 digits), a parenthesised area code, or national digit groups (9-12 digits; every group of two
digits or more, the last of three or more unless all are pairs after a trunk 0, as in French numbers); look-alikes
are refused: arithmetic (`100-50-30-15 = 5`, any candidate beside =, +, *, /), thousands separators
(`14,000-3,920-1,000`, `1 234 567`), dates, years, ids (`13728057-1`). Digits inside URLs and decimal map
coordinates (`40.7128, -74.0060`) are masked before phones, cards and IBANs are looked for. Street addresses are
a house number, one to four capitalised words and a street type (`221B Baker Street`, `1600 Pennsylvania Ave NW`),
optionally a unit and `City, ST 12345`; names are only those a text marks as names (an honorific: `Dr. Ada
Lovelace`; "my name is ...", "Name: ..."). Generic `api_key=...` / `Bearer ...` values count only when they look
random (letters and digits, Shannon entropy >= 3 bits/char), so placeholders like `YOUR_API_KEY` pass.
Overlapping candidates are resolved by kind priority (secret > email > iban > card > ip > phone > address >
name), then by length, so a card number is never also reported as a phone number. Precision and recall per kind
on a labelled benchmark (tests/data/pii_benchmark.jsonl) are in docs/data-quality.md. A kind's detector runs only
on text that a cheap literal test (`_GATES`: a digit, an @, a key prefix) says could hold it, which makes a
data check's PII scan several times faster on ordinary text and changes no finding.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from tunelab.config import PII_KINDS
from tunelab.errors import TunelabError
from tunelab.quality.pii_ner import ner_spans


@dataclass(frozen=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    text: str


_PRIORITY = {"secret": 0, "email": 1, "iban": 2, "card": 3, "ip": 4, "phone": 5, "address": 6, "name": 7}

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
_CARD = re.compile(r"(?<![\d+,.-])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d)")
# Card networks by prefix (IIN): Visa, Mastercard (51-55, 2221-2720), Amex, Discover, JCB, Diners, UnionPay,
# Maestro. A Luhn-valid number without one of these is an id or an order number.
_CARD_PREFIX = re.compile(
    r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6011|64[4-9]|65|35|30[0-5]|3[689]|62|50|5[6-8]|6)"
)
_CARD_GROUPS = re.compile(r"^(?:\d+|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?|\d{4}[ -]\d{6}[ -]\d{4,5})$")
# A leading + means an international phone number, never a card.
# Printed IBANs come in groups of four; candidates are trimmed group by group until the checksum holds,
# so a capitalised word right after an IBAN is not swallowed.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:|\d{1,3}(?:\.\d{1,3}){3})(?![\w:])")
_PHONE = re.compile(r"(?<![\w+/.,-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d+(?:[ .-]\d+){0,5}(?![\w/]|[.,-]\d)")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}|^\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_THOUSANDS = re.compile(r"^\d{1,3}(?:[ .]\d{3}){2,}$")  # 1 234 567, 1.234.567
_MATH = set("=+*/×÷<>^%")
# Spans whose digits are not phones, cards or IBANs: URLs, and decimal coordinate pairs.
_MASKS = [
    re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE),
    re.compile(r"-?\d{1,3}\.\d{3,}\s*°?\s*[NS]?\s*,?\s*-?\d{1,3}\.\d{3,}\s*°?\s*[EW]?"),
]
_VERSION_BEFORE = re.compile(
    r"(?:\bv|version\s*|\bver\.?\s*|release\s*|build\s*|firmware\s*|kernel\s*)$", re.IGNORECASE
)
_PO_BOX = re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b", re.IGNORECASE)
_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|Ter|Circle|Cir|"
    "Parkway|Pkwy|Highway|Hwy|Square|Sq|Crescent|Close|Row|Alley|Trail|Plaza|Loop|Walk|Mews|Gardens"
)
_ADDRESS = re.compile(
    rf"(?<![\w,.-])\d{{1,5}}[A-Za-z]?(?:-\d{{1,4}})?\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\.?\s+|\d{{1,3}}(?:st|nd|rd|th)\s+){{1,4}}"
    rf"(?:{_STREET_TYPES})\b\.?(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|#)\.?\s*[\w-]+)?"
    r"(?:,\s+[A-Z][a-z]+(?:\s[A-Z][a-z]+)*(?:,\s+[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?)?"
)
_NOT_BEFORE_ADDRESS = re.compile(
    r"\b(?:in|since|by|until|from|of|around|before|after|about|over|than)\s+$", re.IGNORECASE
)
_NAME_WORD = r"(?:[A-Z]')?[A-Z][^\W\d_A-Z]+(?:-[A-Z][^\W\d_A-Z]+)?"  # Ada, O'Brien, Anna-Lena, Müller
_NAMES = [
    re.compile(
        rf"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sir|Dame|Madam|Miss|Lady|Lord)\.?\s+((?:{_NAME_WORD}\s+){{0,2}}{_NAME_WORD})"
    ),
    re.compile(rf"(?i:\bmy name is|\bmy name's|\bi am called|\bsigned,?)\s+({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})"),
    re.compile(rf"(?im:^\s*(?:full\s+)?name\s*:\s*)({_NAME_WORD}(?:\s+{_NAME_WORD}){{1,2}})"),
]

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


@lru_cache(maxsize=4)  # cards, IBANs and phones mask the same text, one after another
def _masked(text: str) -> str:
    """`text` with URLs and coordinate pairs blanked (same length, so spans still point into `text`)."""
    for pattern in _MASKS:
        text = pattern.sub(lambda m: " " * len(m.group()), text)
    return text


def _arithmetic(text: str, start: int, end: int) -> bool:
    """A number beside an operator (100-50-30-15 = 5) is a calculation, not a phone or a card."""
    before, after = text[:start].rstrip()[-1:], text[end:].lstrip()[:1]
    return before in _MATH or after in _MATH if (before or after) else False


def _cards(text: str) -> Iterable[tuple[int, int]]:
    text = _masked(text)
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if (13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1 and _CARD_PREFIX.match(digits)
                and _CARD_GROUPS.match(m.group()) and not _arithmetic(text, *m.span())):  # fmt: skip
            yield m.span()


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(_masked(text)):
        candidate = m.group()
        while len(candidate.replace(" ", "")) >= 15:
            if iban_ok(candidate):
                yield m.start(), m.start() + len(candidate)
                break
            candidate = candidate[:-1].rstrip()


def _ips(text: str) -> Iterable[tuple[int, int]]:
    yield from (
        m.span() for m in _IPV4.finditer(text) if not _VERSION_BEFORE.search(text[max(0, m.start() - 12) : m.start()])
    )
    for m in _IPV6.finditer(text):
        if any(c.isalnum() for c in m.group()):
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            yield m.span()


def _phones(text: str) -> Iterable[tuple[int, int]]:
    text = _masked(text)
    for m in _PHONE.finditer(text):
        if _phone_shaped(m.group()) and not _arithmetic(text, *m.span()):
            yield m.span()


def _phone_shaped(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if _DATE.match(s) or _THOUSANDS.match(s):
        return False
    if s.startswith("+"):  # +CC then the national number; its first group may be one digit (+33 1 23 45 67 89)
        groups = re.findall(r"\d+", s)[1:]
        return 8 <= len(digits) <= 15 and all(len(g) >= 2 for g in groups[1:])
    if not 9 <= len(digits) <= 12:
        return False
    if s.startswith("("):  # (415) 555-0132
        return all(len(g) >= 3 for g in re.findall(r"\d+", s.split(")", 1)[1]))
    groups = re.findall(r"\d+", s)
    if len(groups) == 1:
        return s.startswith("0")  # a bare national number with its trunk 0 (02079460958)
    if all(len(g) == 4 and g[:2] in ("19", "20") for g in groups) or all(g.endswith("00") for g in groups):
        return False  # a list of years, or of round numbers (1000-2000-3000)
    if len(groups) == 2 and "-" in s and not s.startswith("0"):
        return False  # two hyphenated groups without a trunk 0 are ids (2019-123456, 20231005-0042)
    pairs = all(len(g) == 2 for g in groups) and groups[0].startswith("0")  # 01 23 45 67 89
    return len(groups) <= 5 and all(2 <= len(g) <= 8 for g in groups) and (len(groups[-1]) >= 3 or pairs)


def _addresses(text: str) -> Iterable[tuple[int, int]]:
    yield from (m.span() for m in _PO_BOX.finditer(text))
    for m in _ADDRESS.finditer(text):
        if not _NOT_BEFORE_ADDRESS.search(text[max(0, m.start() - 12) : m.start()]):
            yield m.start(), m.start() + len(m.group().rstrip(". "))


def _names(text: str) -> Iterable[tuple[int, int]]:
    for pattern in _NAMES:
        yield from (m.span(1) for m in pattern.finditer(text))


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
    "address": _addresses,
    "name": _names,
}

# A kind's detector runs only on text its gate accepts: a few substring tests instead of several patterns on text
# that cannot hold that kind (most training text has no digit and no key-like prefix). Literal tests, because a
# case-insensitive regex alternation costs about as much as the patterns it would spare. A gate may accept text
# the detector then refuses, never the other way round.
_DIGIT = re.compile(r"\d")
_IPV6_COLONS = re.compile(r":[0-9A-Fa-f]{0,4}:")
_KEY_PREFIXES = (
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "sk-",
    "xox",
    "AIza",
    "-----BEGIN",
)
_KEY_WORDS = ("api", "secret", "access", "auth", "token", "passw", "bearer")  # _GENERIC's, lowercased
_HONORIFICS = ("Mr", "Ms", "Mx", "Dr", "Prof", "Sir", "Dame", "Madam", "Miss", "Lady", "Lord")  # _NAMES[0]'s


def _any_in(text: str, needles: tuple[str, ...]) -> bool:
    return any(n in text for n in needles)


@lru_cache(maxsize=4)  # five kinds ask about the same text, one after another
def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


_GATES: dict[str, Callable[[str], bool]] = {
    "email": lambda t: "@" in t,
    "ip": lambda t: _has_digit(t) or _IPV6_COLONS.search(t) is not None,
    "phone": _has_digit,
    "card": _has_digit,
    "iban": _has_digit,
    "address": _has_digit,
    "secret": lambda t: _any_in(t, _KEY_PREFIXES) or _any_in(t.lower(), _KEY_WORDS),
    "name": lambda t: _any_in(t, _HONORIFICS) or _any_in(t.lower(), ("name", "called", "signed")),
}

# --------------------------------------------------------------------------- API


def _kinds(kinds: Iterable[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return PII_KINDS
    chosen = tuple(kinds)
    if unknown := [k for k in chosen if k not in _DETECTORS]:
        raise TunelabError(f"unknown PII kind(s) {', '.join(unknown)}; expected some of: {', '.join(PII_KINDS)}")
    return chosen


def find_pii(text: str, kinds: Iterable[str] | None = None, ner: bool = False) -> list[PiiFinding]:
    """Every PII span in `text`, in order, without overlaps; `ner` adds the NER backend's names and places
    (tunelab.quality.pii_ner: Presidio, when installed)."""
    chosen = _kinds(kinds)
    candidates = [(s, e, k) for k in chosen if k not in _GATES or _GATES[k](text)
                  for s, e in _DETECTORS[k](text) if e > s]  # fmt: skip
    if ner:
        candidates += ner_spans(text, chosen)
    candidates.sort(key=lambda c: (_PRIORITY[c[2]], -(c[1] - c[0]), c[0]))
    taken: list[tuple[int, int, str]] = []
    for s, e, k in candidates:
        if all(e <= ts or s >= te for ts, te, _ in taken):
            taken.append((s, e, k))
    return [PiiFinding(k, s, e, text[s:e]) for s, e, k in sorted(taken)]


def redact_pii(text: str, kinds: Iterable[str] | None = None, ner: bool = False) -> tuple[str, list[PiiFinding]]:
    """`text` with each finding replaced by its placeholder ([EMAIL], [PHONE], ...), and the findings."""
    findings = find_pii(text, kinds, ner)
    out, pos = [], 0
    for f in findings:
        out += [text[pos : f.start], f"[{f.kind.upper()}]"]
        pos = f.end
    out.append(text[pos:])
    return "".join(out), findings
