"""Write src/tunelab/examples/data/tiny_ner.jsonl: a SYNTHETIC BIO-tagged NER set (PER, LOC, ORG).

There is no NER data in ../shared, so the example config and the ner tests use this. Sentences come from
templates filled with made-up names, real city names and invented organisations; multi-word entities
exercise I- tags, and some sentences have no entity at all. Every row carries "_synthetic": true.
Deterministic (seed 0): `python scripts/make_tiny_ner.py` rewrites the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIRST = ["Anna", "Omar", "Lena", "Ravi", "Mia", "Jonas", "Sara", "Tomas", "Aiko", "Pablo", "Nina", "Ivan"]
LAST = ["Berg", "Khan", "Silva", "Novak", "Tanaka", "Weber", "Costa", "Moreau"]
LOC = ["Paris", "Lima", "Oslo", "Cairo", "Kyoto", "Quito", "New York", "Buenos Aires", "Cape Town", "Hong Kong"]
ORG = ["Acme", "Globex", "Initech", "Umbrella Corp", "Blue Harbor Bank", "Northwind Traders", "Stark Labs",
       "Vandelay Industries"]  # fmt: skip
TEMPLATES = [
    "{PER} lives in {LOC} .",
    "{PER} works for {ORG} .",
    "{ORG} opened an office in {LOC} .",
    "Yesterday {PER} flew from {LOC} to {LOC} .",
    "{PER} met {PER} at the {ORG} headquarters .",
    "The {ORG} team hired {PER} last year .",
    "In {LOC} , {PER} founded {ORG} .",
    "{PER} said the weather in {LOC} was cold .",
    "We visited {LOC} in {NUM} days .",
    "Nobody called about the {NUM} orders today .",
    "The report from {ORG} was late again .",
    "Please send the invoice to {PER} by Friday .",
]


def entity(kind: str, rng: random.Random) -> list[str]:
    if kind == "PER":
        return [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
    return rng.choice(LOC if kind == "LOC" else ORG).split()


def sentence(rng: random.Random) -> dict:
    tokens: list[str] = []
    tags: list[str] = []
    for piece in rng.choice(TEMPLATES).split():
        if piece == "{NUM}":  # varies the entity-free sentences, which would otherwise repeat
            tokens.append(str(rng.randint(2, 99)))
            tags.append("O")
        elif piece.startswith("{"):
            kind = piece[1:-1]
            words = entity(kind, rng)
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(piece)
            tags.append("O")
    return {"tokens": tokens, "tags": tags, "_synthetic": True}


def make(n: int = 240, seed: int = 0) -> list[dict]:
    """n distinct sentences (a repeat would be flagged by the data check and could leak into eval)."""
    rng = random.Random(seed)
    out: dict[str, dict] = {}
    while len(out) < n:
        row = sentence(rng)
        out.setdefault(" ".join(row["tokens"]), row)
    return list(out.values())


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "examples" / "data" / "tiny_ner.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in make()))
    print(f"wrote {out}")
