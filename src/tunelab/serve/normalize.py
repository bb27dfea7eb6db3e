"""Text normalization for the guard: what an attacker does to slip a phrase past a pattern, undone.

`normalize` is what every check matches against: NFKC (fullwidth and mathematical letters, ligatures,
circled letters become plain ones), invisible format characters removed (zero-width spaces and joiners,
soft hyphens, bidi controls: every Unicode `Cf` character), Cyrillic and Greek look-alikes folded to the
Latin letters they imitate, and whitespace runs (newlines included) collapsed to one space.

`variants` adds the views that catch the rest: letters spaced out or cut by punctuation ("i g n o r e",
"ig-nore"), leetspeak ("1gn0r3"), and base64 blobs decoded. `squash` (letters only, lowercase) is for
matching a short list of known phrases whatever was put between their letters.

`pii_view` is the lighter normalization used for PII: it keeps the text's layout (so a redacted message
still reads as the user wrote it) and only removes what hides an identifier: NFKC (fullwidth `＠` and
digits), format characters, and whitespace runs between digits (a card number split over lines).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

# Look-alikes NFKC leaves alone: Cyrillic and Greek letters drawn like Latin ones, and a few Latin oddities.
HOMOGLYPHS = str.maketrans(
    {
        **dict(zip("аеорсухіјѕԁһӏкмтвнАВЕКМНОРСТХУІЈЅ", "aeopcyxijsdhlkmtbhABEKMHOPCTXYIJS", strict=True)),
        **dict(zip("αβεικνορτυχωΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "abeikvoptuxwABEZHIKMNOPTYX", strict=True)),
        **dict(zip("ıłɡɑſƖǀ", "ilgasll", strict=True)),
    }
)
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_SPACE = re.compile(r"\s+")
# Three or more single characters each followed by one separator: "i g n o r e", "i.g.n.o.r.e", "i-g-n".
_SPACED = re.compile(r"(?<![^\W_])(?:[^\W_][ .\-_*|/+~]{1,2}){3,}[^\W_](?![^\W_])")
_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_BETWEEN_DIGITS = re.compile(r"(?<=\d)\s+(?=\d)")


def strip_format(text: str) -> str:
    """NFKC and no invisible format characters (Unicode category Cf: zero-width, soft hyphen, bidi)."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", strip_format(text).translate(HOMOGLYPHS)).strip()


def squash(text: str) -> str:
    """Letters only, lowercase: what is left when every separator an attacker inserted is gone."""
    return "".join(c for c in normalize(text).lower().translate(LEET) if c.isalpha())


def variants(text: str) -> list[str]:
    """The normalized text and the other views worth matching (deduplicated, normalized first)."""
    base = normalize(text)
    out = [base, _unspace(strip_format(text).translate(HOMOGLYPHS)), base.translate(LEET)]
    out += [normalize(d) for d in decoded_blobs(base)]
    return list(dict.fromkeys(v for v in out if v))


def _unspace(text: str) -> str:
    """Join spaced-out letters; a wider gap (two separators or more) stays a word break."""

    def join(m: re.Match[str]) -> str:
        words = re.split(r"[ .\-_*|/+~]{2,}", m.group())
        return " ".join(re.sub(r"[ .\-_*|/+~]", "", w) for w in words)

    return _SPACE.sub(" ", _SPACED.sub(join, text)).strip()


def decoded_blobs(text: str) -> list[str]:
    """Base64 runs that decode to readable UTF-8 text (an instruction smuggled as an encoded blob)."""
    found = []
    for m in _B64.finditer(text):
        blob = m.group()
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if decoded and sum(c.isprintable() or c.isspace() for c in decoded) / len(decoded) > 0.95:
            found.append(decoded)
    return found


def pii_view(text: str) -> tuple[str, list[int]]:
    """(the view, for each of its characters the index in `text` it came from): spans found in the view
    map back to the original, which streaming redaction needs to know what it may release."""
    chars: list[str] = list(text)
    where: list[int] = list(range(len(text)))
    if not text.isascii():  # ASCII has no format characters and is its own NFKC
        chars, where = [], []
        for i, c in enumerate(text):
            if unicodedata.category(c) == "Cf":
                continue
            for d in unicodedata.normalize("NFKC", c):  # per character: composition across characters is no PII
                chars.append(d)
                where.append(i)
    view = "".join(chars)
    keep = [True] * len(view)
    for m in _BETWEEN_DIGITS.finditer(view):  # "4111 1111\n1111" -> "4111 1111 1111"
        chars[m.start()] = " "
        keep[m.start() + 1 : m.end()] = [False] * (m.end() - m.start() - 1)
    return "".join(c for c, k in zip(chars, keep) if k), [w for w, k in zip(where, keep) if k]
