"""The quickstart's task: turn a customer-support message into a JSON ticket. Written for the project.

Deterministic from a seed. Each message mentions an order number, expresses one of six intents in one
of several phrasings, and may say it is urgent; the answer is
`{"intent": ..., "order_id": ..., "priority": "high"|"normal"}`. Learning it needs a little of everything a
real extraction task needs: classify (intent), copy (order_id) and spot a cue (priority), in valid JSON.
Splits are disjoint in order ids and customer names, so the test split measures generalization.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Extract the ticket as JSON."

INTENTS: dict[str, list[str]] = {
    "track_order": ["Where is my order {oid}?", "Can you tell me when order {oid} will arrive?",
                    "Order {oid} still hasn't shown up, any tracking update?", "I want to track order {oid}."],
    "cancel_order": ["Please cancel order {oid}.", "I changed my mind, cancel {oid} please.",
                     "Can I still cancel order {oid}?", "Stop order {oid}, I don't want it anymore."],
    "refund": ["I want a refund for order {oid}.", "Please give me my money back for {oid}.",
               "How do I get refunded for order {oid}?", "Refund order {oid} to my card."],
    "change_address": ["I need to change the delivery address for order {oid}.", "Ship order {oid} to my new address.",
                       "Wrong address on {oid}, can you update it?", "Please update the address of order {oid}."],
    "damaged_item": ["Order {oid} arrived broken.", "The item in order {oid} is damaged.",
                     "My package {oid} came smashed.", "Everything in order {oid} was cracked when it arrived."],
    "wrong_item": ["I received the wrong item in order {oid}.", "Order {oid} has someone else's product.",
                   "This is not what I ordered, order {oid}.", "You sent me the wrong thing for {oid}."],
}  # fmt: skip
URGENT = ["This is urgent!", "Please help ASAP.", "I need this fixed today.", "It's urgent."]
GREETINGS = ["Hi, {name} here.", "Hello, this is {name}.", "Hey, I'm {name}.", "Good morning, {name} writing.", ""]
FIRST = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kira", "Liam", "Maya",
         "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Xena", "Yuki", "Zoe"]  # fmt: skip
LAST = ["Lee", "Smith", "Garcia", "Chen", "Novak", "Okafor", "Rossi", "Silva", "Kim", "Brown", "Dubois", "Khan"]

SPLITS = {"train": 800, "eval": 100, "test": 200}


def make_example(rng: random.Random, order_id: str, name: str) -> dict:
    intent = rng.choice(sorted(INTENTS))
    urgent = rng.random() < 0.4
    parts = [rng.choice(GREETINGS).format(name=name), rng.choice(INTENTS[intent]).format(oid=order_id)]
    if urgent:
        parts.insert(rng.choice([1, 2]), rng.choice(URGENT))
    answer = {"intent": intent, "order_id": order_id, "priority": "high" if urgent else "normal"}
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": " ".join(p for p in parts if p)},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def make_splits(seed: int = 0) -> dict[str, list[dict]]:
    """train/eval/test with disjoint order ids and disjoint customer names."""
    rng = random.Random(seed)
    names = [f"{f} {last}" for f in FIRST for last in LAST]
    rng.shuffle(names)
    ids = rng.sample(range(10000, 100000), sum(SPLITS.values()))
    out, start = {}, 0
    cut = {"train": names[: len(names) * 7 // 10], "eval": names[len(names) * 7 // 10 : len(names) * 8 // 10],
           "test": names[len(names) * 8 // 10 :]}  # fmt: skip
    for split, n in SPLITS.items():
        out[split] = [make_example(rng, str(oid), rng.choice(cut[split])) for oid in ids[start : start + n]]
        start += n
    return out


def write_splits(folder: Path, seed: int = 0) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_splits(seed).items():
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
