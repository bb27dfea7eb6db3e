"""The quickstart's task: turn a customer-support message into a JSON ticket. Written for the project.

Deterministic from a seed. Each message names a product and an order number, expresses one of six intents in
one of several phrasings, and may say it is urgent; the answer is
`{"intent": ..., "item": ..., "priority": "high"|"normal"}`: classify (intent), extract (item) and spot a cue
(priority), in valid JSON. Order ids are deliberately not asked for: copying arbitrary digits needs far
more training than the quickstart's few minutes on a CPU give a model trained from scratch. Splits are disjoint
in order ids and customer names, so the test split measures generalization beyond memorized messages.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Extract the ticket as JSON."

INTENTS: dict[str, list[str]] = {
    "track_order": ["Where is my {item}? Order {oid}.", "Can you tell me when the {item} from order {oid} will arrive?",
                    "Order {oid} (a {item}) still hasn't shown up, any tracking update?", "I want to track my {item}, order {oid}."],
    "cancel_order": ["Please cancel my {item}, order {oid}.", "I changed my mind about the {item}, cancel {oid} please.",
                     "Can I still cancel the {item} in order {oid}?", "Stop order {oid}, I don't want the {item} anymore."],
    "refund": ["I want a refund for the {item} from order {oid}.", "Please give me my money back for the {item} ({oid}).",
               "How do I get refunded for my {item}? Order {oid}.", "Refund the {item} in order {oid} to my card."],
    "change_address": ["I need to change the delivery address for my {item}, order {oid}.",
                       "Ship the {item} from order {oid} to my new address.",
                       "Wrong address on {oid} for the {item}, can you update it?",
                       "Please update the address for the {item} in order {oid}."],
    "damaged_item": ["My {item} from order {oid} arrived broken.", "The {item} in order {oid} is damaged.",
                     "My {item} came smashed, order {oid}.", "The {item} was cracked when it arrived (order {oid})."],
    "wrong_item": ["I ordered a {item} but got something else, order {oid}.", "Order {oid} was supposed to be a {item}.",
                   "This is not the {item} I ordered, order {oid}.", "You sent me the wrong thing instead of my {item} ({oid})."],
}  # fmt: skip
ITEMS = ["laptop", "phone", "headphones", "coffee maker", "backpack", "desk lamp", "running shoes", "blender"]
URGENT = ["This is urgent!", "Please help ASAP.", "I need this fixed today.", "It's urgent."]
GREETINGS = ["Hi, {name} here.", "Hello, this is {name}.", "Hey, I'm {name}.", "Good morning, {name} writing.", ""]
FIRST = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kira", "Liam", "Maya",
         "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Xena", "Yuki", "Zoe"]  # fmt: skip
LAST = ["Lee", "Smith", "Garcia", "Chen", "Novak", "Okafor", "Rossi", "Silva", "Kim", "Brown", "Dubois", "Khan"]

SPLITS = {"train": 2000, "eval": 100, "test": 200}


def make_example(rng: random.Random, order_id: str, name: str) -> dict:
    intent = rng.choice(sorted(INTENTS))
    urgent = rng.random() < 0.4
    item = rng.choice(ITEMS)
    parts = [rng.choice(GREETINGS).format(name=name), rng.choice(INTENTS[intent]).format(oid=order_id, item=item)]
    if urgent:
        parts.insert(rng.choice([1, 2]), rng.choice(URGENT))
    answer = {"intent": intent, "item": item, "priority": "high" if urgent else "normal"}
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
