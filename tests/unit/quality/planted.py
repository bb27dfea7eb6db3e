"""Planted data: small files with known problems at known lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LONG = (
    "Explain how compound interest works for a savings account that pays a fixed annual rate, "
    "and show how the balance grows after five years when interest is added monthly"
)
NEAR = LONG.replace("five years", "six years")  # near-duplicate of LONG
LEAKED = "What is the capital of Australia and why was it chosen over Sydney?"


def _row(instruction: str, output: str = "An answer.") -> dict:
    return {"instruction": instruction, "output": output}


# line -> row (or raw text for a broken line); expectations below refer to these line numbers
TRAIN = {
    1: _row("Say hello to the user"),
    2: _row("  say HELLO   to the user "),  # exact duplicate of 1 after normalizing (and needs trimming)
    3: _row(LONG, "It compounds."),
    4: _row(NEAR, "It compounds."),  # near-duplicate of 3
    5: '{"instruction": "broken", "output": ',  # invalid JSON
    6: {"instruction": "no output field"},  # schema error
    7: _row("Contact me at jane.doe@example.com about the refund"),
    8: _row("My phone is +44 20 7946 0958, call after six"),
    9: _row("Charge card 4111 1111 1111 1111 for the order"),
    10: _row("Send it to IBAN GB82 WEST 1234 5698 7654 32 please"),
    11: _row("The server at 192.168.10.20 is down"),
    12: _row("Use key AKIAIOSFODNN7EXAMPLE for the bucket"),
    13: _row(LEAKED, "Canberra, as a compromise."),  # leaks into test line 2
    14: _row("Summarize the meeting notes", "   "),  # empty output
    15: _row("Translate 'good morning' into French", "Bonjour."),
}
TEST = {
    1: _row("Name three primary colours", "Red, yellow, blue."),
    2: _row(LEAKED, "Canberra."),  # same input as train line 13
    3: _row(LONG.replace("monthly", "every month"), "It grows."),  # near leak of train line 3
}


def write_jsonl(path: Path, rows: dict[int, object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for _, r in sorted(rows.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Planted:
    train: Path
    test: Path
    labels: Path  # classification CSV with a label conflict and a duplicate


def make_planted(tmp_path: Path) -> Planted:
    labels = tmp_path / "intents.csv"
    labels.write_text(
        "text,category\n"
        "where is my card,card_arrival\n"  # line 2
        "how do I top up,top_up\n"  # line 3
        "Where is my card?,card_arrival\n"  # line 4: not a duplicate (punctuation differs)
        "where is my card,lost_card\n"  # line 5: conflicts with line 2
        "how do I top up,top_up\n"  # line 6: duplicate of line 3
        '"my card,\nit broke",damaged_card\n'  # lines 7-8: a quoted multi-line cell
        "what is the fee,\n"  # line 9: missing label
    )
    return Planted(
        write_jsonl(tmp_path / "train.jsonl", TRAIN), write_jsonl(tmp_path / "test.jsonl", TEST), labels
    )
