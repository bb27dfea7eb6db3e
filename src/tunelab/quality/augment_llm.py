"""Model-based augmentation through an OpenAI-compatible chat endpoint, with the official `openai` client.

- paraphrase: rewrite the input, same meaning (and so the same label).
- backtranslate: input -> pivot language -> source language, two requests.
- synthesize: for a label (round-robin over labels, or none), show a few seed inputs with that label and
  ask for one new input; rows with an answer field get an answer generated for the new input.
- self_instruct: show a few tasks from a growing pool (seeds plus accepted generations), ask for new tasks
  one per line, and accept a task only if it is not a near-duplicate (MinHash/LSH, then exact Jaccard) of
  anything in the data or already accepted; rejected tasks are counted.

Replies are stripped of quotes and list numbering. A failed request is a user error naming the endpoint.
"""

from __future__ import annotations

import random
import re
from typing import Any

from datasketch import MinHash, MinHashLSH

from tunelab.endpoint import Endpoint, api_key, chat
from tunelab.errors import TunelabError
from tunelab.quality.augment import AugmentOptions, EndpointOptions, get_input, output_field, variant
from tunelab.quality.dedup import NUM_PERM, jaccard, shingles
from tunelab.quality.items import Item

SYSTEM = "You are a careful data writer. Reply with only the requested text, no preamble or quotes."
PARAPHRASE = "Paraphrase the following text. Keep its meaning, intent and language. Reply with it only.\n\n{text}"
TRANSLATE = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"
SYNTHESIZE = (
    "Here are examples{about}:\n\n{examples}\n\nWrite one new example{same}: different wording and "
    "details, same kind of request. Reply with the new example only."
)
SELF_INSTRUCT = (
    "Here are some tasks:\n\n{examples}\n\nCome up with {n} new, diverse tasks of the same kind. "
    "Reply with one task per line, nothing else."
)


class Chat:
    """One endpoint, one client; `ask` sends a single-turn chat and returns the reply text."""

    def __init__(self, ep: EndpointOptions) -> None:
        self.ep = ep
        key = api_key("OPENAI_API_KEY", "augment", explicit=ep.api_key)
        self.client = Endpoint(ep.base_url, key, ep.timeout, max_retries=1).client()
        self.requests = 0

    def ask(self, prompt: str) -> str:
        self.requests += 1
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        r = chat(self.client, self.ep.model, messages, temperature=self.ep.temperature, max_tokens=self.ep.max_tokens)
        if r.error is not None:
            raise TunelabError(f"augment: request to {self.ep.base_url} failed: {r.error}")
        return tidy(r.text or "")


def tidy(reply: str) -> str:
    reply = reply.strip()
    if len(reply) > 1 and reply[0] == reply[-1] and reply[0] in "\"'":
        reply = reply[1:-1].strip()
    return reply


def model_variants(
    items: list[Item], fmt: str | None, options: AugmentOptions, method: str
) -> tuple[list[dict[str, Any]], int]:
    """(generated rows, rejected count) for one model-based method."""
    if options.endpoint is None:
        raise TunelabError(f"augment method {method!r} needs an endpoint (--base-url and --model)")
    chat = Chat(options.endpoint)
    rng = random.Random(f"{options.seed}:{method}")
    if method == "paraphrase":
        rows = [variant(it, fmt, chat.ask(PARAPHRASE.format(text=get_input(it, fmt))), method)
                for it in items for _ in range(options.per_record)]  # fmt: skip
        return rows, 0
    if method == "backtranslate":
        return [variant(it, fmt, backtranslate(chat, get_input(it, fmt), options), method) for it in items], 0
    if method == "synthesize":
        return synthesize(chat, items, fmt, options, rng), 0
    return self_instruct(chat, items, fmt, options, rng)


def backtranslate(chat: Chat, text: str, options: AugmentOptions) -> str:
    pivot = chat.ask(TRANSLATE.format(language=options.pivot_language, text=text))
    return chat.ask(TRANSLATE.format(language=options.source_language, text=pivot))


def _answer(chat: Chat, seed: Item, fmt: str | None, new_input: str) -> str | None:
    return chat.ask(new_input) if output_field(seed, fmt) else None


def synthesize(
    chat: Chat, items: list[Item], fmt: str | None, options: AugmentOptions, rng: random.Random
) -> list[dict[str, Any]]:
    by_label: dict[str | None, list[Item]] = {}
    for it in items:
        by_label.setdefault(it.label, []).append(it)
    labels = sorted(by_label, key=lambda x: (x is None, str(x)))
    rows = []
    for n in range(options.num_generate):
        label = labels[n % len(labels)]
        seeds = rng.sample(by_label[label], min(options.few_shot, len(by_label[label])))
        examples = "\n".join(f"- {get_input(s, fmt)}" for s in seeds)
        about, same = (f" labelled {label!r}", f" with the label {label!r}") if label is not None else ("", "")
        new = chat.ask(SYNTHESIZE.format(about=about, examples=examples, same=same))
        rows.append(variant(seeds[0], fmt, new, "synthesize", _answer(chat, seeds[0], fmt, new)))
    return rows


def self_instruct(
    chat: Chat, items: list[Item], fmt: str | None, options: AugmentOptions, rng: random.Random
) -> tuple[list[dict[str, Any]], int]:
    pool = [get_input(it, fmt) for it in items]
    lsh = MinHashLSH(threshold=options.near_threshold, num_perm=NUM_PERM)
    sets: list[set[bytes]] = []

    def add(text: str) -> None:
        sets.append(shingles(text))
        lsh.insert(len(sets) - 1, _minhash(sets[-1]), check_duplication=False)

    def novel(text: str) -> bool:
        s = shingles(text)
        return bool(s) and not any(jaccard(s, sets[k]) >= options.near_threshold for k in lsh.query(_minhash(s)))

    for text in pool:
        add(text)
    rows: list[dict[str, Any]] = []
    rejected = 0
    for _ in range(3 * options.num_generate):  # bounded: a model that only repeats itself cannot loop forever
        if len(rows) >= options.num_generate:
            break
        shown = rng.sample(pool, min(options.few_shot, len(pool)))
        reply = chat.ask(SELF_INSTRUCT.format(examples="\n".join(f"- {t}" for t in shown), n=options.few_shot))
        for task in parse_lines(reply):
            if len(rows) >= options.num_generate:
                break
            if not novel(task):
                rejected += 1
                continue
            add(task)
            pool.append(task)
            seed = rng.choice(items)
            rows.append(variant(seed, fmt, task, "self_instruct", _answer(chat, seed, fmt, task)))
    return rows, rejected


def _minhash(s: set[bytes]) -> MinHash:
    mh = MinHash(num_perm=NUM_PERM)
    mh.update_batch(list(s))
    return mh


def parse_lines(reply: str) -> list[str]:
    """Tasks from a list reply: one per line, without '1.', '-', '*' markers or surrounding quotes."""
    tasks = [tidy(re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line)) for line in reply.splitlines()]
    return [t for t in tasks if t]
