"""PII detectors: each kind found where it is, and look-alikes (failed checksums, years, placeholders) not."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.quality.pii import PII_KINDS, find_pii, iban_ok, luhn_ok, redact_pii

GH = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GH_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"

POSITIVE = [
    ("email", "write to jane.doe+ml@example.co.uk today", "jane.doe+ml@example.co.uk"),
    ("phone", "call +1 415-555-0132 now", "+1 415-555-0132"),
    ("phone", "ring +44 20 7946 0958.", "+44 20 7946 0958"),
    ("phone", "office (415) 555-0132", "(415) 555-0132"),
    ("phone", "national 020 7946 0958", "020 7946 0958"),
    ("phone", "tel +4915112345678", "+4915112345678"),
    ("card", "card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
    ("card", "mc 5500-0000-0000-0004.", "5500-0000-0000-0004"),
    ("card", "amex 378282246310005", "378282246310005"),
    ("iban", "pay GB82 WEST 1234 5698 7654 32 Thanks", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "iban DE89370400440532013000", "DE89370400440532013000"),
    ("ip", "from 192.168.1.10.", "192.168.1.10"),
    ("ip", "host 2001:db8::8a2e:370:7334 up", "2001:db8::8a2e:370:7334"),
    ("ip", "loopback ::1 only", "::1"),
    ("secret", "key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", f"token {GH}", GH),
    ("secret", f"pat {GH_PAT}", GH_PAT),
    ("secret", "OPENAI_API_KEY: sk-proj-Ab3dE6gH9jK2mN5pQ8sT1vW4", "sk-proj-Ab3dE6gH9jK2mN5pQ8sT1vW4"),
    ("secret", "slack xoxb-123456789012-abcDEF", "xoxb-123456789012-abcDEF"),
    ("secret", f"g {GOOGLE}", GOOGLE),
    ("secret", f"key:\n{PEM}\n", PEM),
    ("secret", 'config api_key="q8Zr3Lw9Tx2Vb7Nm4Kp1"', "q8Zr3Lw9Tx2Vb7Nm4Kp1"),
    ("secret", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc123XYZ", "eyJhbGciOiJIUzI1NiJ9.abc123XYZ"),
]

NEGATIVE = [
    "the card 4111 1111 1111 1112 fails Luhn",
    "serial 1234567812345678",  # 16 digits, Luhn fails
    "IBAN GB82 WEST 1234 5698 7654 33 has a bad checksum",
    "address 999.1.1.1 and 256.0.0.1 are not IPs",
    "version 1.2.3 released at 12:30:45",
    "in 2023 we sold 1,250,000 units for $1999.99",
    "dates 2023-01-15 and 15/01/2023 and 1999-2004",
    "call 911 or dial 12345; order #123456",
    "api_key=YOUR_API_KEY_HERE_PLEASE",
    "password = xxxxxxxxxxxxxxxxxxxx",
    "I use sk-learn and scikit-learn for task-force work",
    "email me at jane at example dot com",
    "0000 0000 0000 0000",  # Luhn-valid but all one digit
]


@pytest.mark.parametrize(("kind", "text", "expected"), POSITIVE)
def test_each_kind_is_found_with_its_span(kind: str, text: str, expected: str) -> None:
    findings = find_pii(text)
    assert [(f.kind, f.text) for f in findings] == [(kind, expected)]
    f = findings[0]
    assert text[f.start : f.end] == expected


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_are_not_pii(text: str) -> None:
    assert find_pii(text) == []


def test_redact_replaces_every_kind_with_its_placeholder() -> None:
    text = (
        "Ms. Jane Roe (jane@example.com, +1 415-555-0132) paid with 4111-1111-1111-1111 from "
        "DE89 3704 0044 0532 0130 00 at 10.0.0.7 using AKIAIOSFODNN7EXAMPLE; she lives at 12 Elm Street."
    )
    redacted, findings = redact_pii(text)
    assert redacted == ("Ms. [NAME] ([EMAIL], [PHONE]) paid with [CARD] from [IBAN] at [IP] using [SECRET]; she "
                        "lives at [ADDRESS].")  # fmt: skip
    assert [f.kind for f in findings] == ["name", "email", "phone", "card", "iban", "ip", "secret", "address"]
    assert sorted(f.kind for f in findings) == sorted(PII_KINDS)


def test_kinds_filter_and_unknown_kind() -> None:
    text = "mail a@b.io or call +1 415-555-0132"
    assert [f.kind for f in find_pii(text, kinds=["phone"])] == ["phone"]
    assert redact_pii(text, kinds=("email",))[0] == "mail [EMAIL] or call +1 415-555-0132"
    with pytest.raises(TunelabError, match="unknown PII kind.*ssn"):
        find_pii(text, kinds=["ssn"])


def test_card_is_not_also_a_phone_and_checksums() -> None:
    assert [f.kind for f in find_pii("4111 1111 1111 1111")] == ["card"]
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 23")
