"""`tunelab data augment`: label-preserving augmentation, with or without a model.

Without a model: random word deletion, random word swaps (both seeded) and user templates
(`"Could you help: {text}"`). With a model, through any OpenAI-compatible endpoint (see `augment_llm`):
paraphrase, back-translation, synthetic examples from seed examples, and self-instruct.

Only the record's input side changes (the user turn, instruction, prompt or text), and the rest of the row
(label, answer, extra columns) is copied from the source record, which is what keeps the label valid.
Every generated row carries `_synthetic` (the method) and `_source` (the record it came from). Generated
inputs that equal an existing or earlier generated input are discarded and counted, never silently kept.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.quality.io import derived_path, write_rows
from tunelab.quality.items import Item, get_leaf, load_dataset, set_leaf, text_hash

SIMPLE_METHODS = ("delete", "swap", "template")
MODEL_METHODS = ("paraphrase", "backtranslate", "synthesize", "self_instruct")


class EndpointOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name sent with each request.")
    api_key: str | None = Field(None, description="API key; default: $OPENAI_API_KEY, or 'none' for local servers.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature for generation.")
    max_tokens: int = Field(256, ge=1, description="Maximum tokens per reply.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for each request.")


class AugmentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    methods: list[str] = Field(default_factory=lambda: ["delete", "swap"], description="Augmentations to apply.")
    per_record: int = Field(1, ge=1, description="Variants per source record and method (simple and paraphrase).")
    seed: int = Field(0, description="Seed for choosing words and seed examples.")
    deletion_p: float = Field(0.1, gt=0, lt=1, description="Probability of deleting each word (delete).")
    swaps: int = Field(1, ge=1, description="Word pairs swapped per variant (swap).")
    templates: list[str] = Field(default_factory=list, description="Templates with {text} for the input (template).")
    pivot_language: str = Field("French", description="Language to translate through (backtranslate).")
    source_language: str = Field("English", description="Language of the data, translated back into (backtranslate).")
    num_generate: int = Field(10, ge=1, description="New records to generate (synthesize, self_instruct).")
    few_shot: int = Field(3, ge=1, description="Seed examples shown per generation request.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Self-instruct drops tasks this similar to others.")
    endpoint: EndpointOptions | None = Field(None, description="The model endpoint for model-based methods.")


@dataclass
class AugmentResult:
    rows: list[dict[str, Any]]
    generated: dict[str, int] = field(default_factory=dict)
    discarded: dict[str, int] = field(default_factory=dict)
    output: str | None = None


def input_field(it: Item, fmt: str | None) -> str:
    """The path of the text that augmentation may change: the last user turn, instruction, prompt or text."""
    row = it.row
    if fmt == "messages" or (fmt == "kto" and "messages" in row):
        users = [i for i, m in enumerate(row["messages"]) if m.get("role") == "user"]
        if users:
            return f"messages[{users[-1]}].content"
    elif fmt == "sharegpt":
        users = [i for i, m in enumerate(row["conversations"]) if str(m.get("from")).lower() in ("human", "user")]
        if users:
            return f"conversations[{users[-1]}].value"
    else:
        name = {"alpaca": "instruction", "text": "text"}.get(fmt or "", "prompt")
        if isinstance(row.get(name), str):
            return name
    raise TunelabError(f"{it.where}: no user text to augment in a {fmt} record")


def output_field(it: Item, fmt: str | None) -> str | None:
    """The path of the answer to regenerate for a new input; None for text/classification rows."""
    if fmt == "messages":
        last = max(i for i, m in enumerate(it.row["messages"]) if m.get("role") == "assistant")
        return f"messages[{last}].content"
    if fmt == "sharegpt":
        last = max(
            i for i, m in enumerate(it.row["conversations"]) if str(m.get("from")).lower() in ("gpt", "assistant")
        )
        return f"conversations[{last}].value"
    return {"alpaca": "output", "prompt_completion": "completion"}.get(fmt or "")


def variant(it: Item, fmt: str | None, new_input: str, method: str, new_output: str | None = None) -> dict[str, Any]:
    """A copy of the source row with a new input (and answer), marked synthetic."""
    row = copy.deepcopy(it.row)
    set_leaf(row, input_field(it, fmt), new_input)
    if new_output is not None and (out := output_field(it, fmt)):
        set_leaf(row, out, new_output)
    row["_synthetic"] = method
    row["_source"] = it.where
    return row


def random_deletion(text: str, p: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept or [rng.choice(words)]) if words else text


def random_swap(text: str, n: int, rng: random.Random) -> str:
    words = text.split()
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def apply_template(template: str, text: str) -> str:
    return template.replace("{text}", text)  # not str.format: user text may hold braces


def simple_variants(items: list[Item], fmt: str | None, options: AugmentOptions, method: str) -> list[dict[str, Any]]:
    rng = random.Random(f"{options.seed}:{method}")
    out = []
    for it in items:
        text = get_input(it, fmt)
        if method == "template":
            out += [variant(it, fmt, apply_template(t, text), method) for t in options.templates]
            continue
        for _ in range(options.per_record):
            new = (
                random_deletion(text, options.deletion_p, rng)
                if method == "delete"
                else random_swap(text, options.swaps, rng)
            )
            out.append(variant(it, fmt, new, method))
    return out


def get_input(it: Item, fmt: str | None) -> str:
    return str(get_leaf(it.row, input_field(it, fmt)))


def augment(
    path: str, output: str | None = None, options: AugmentOptions | None = None, fmt: str = "auto"
) -> AugmentResult:
    """Write the original records plus the augmented ones (default `<name>.augmented<suffix>`)."""
    options = options or AugmentOptions()
    ds = load_dataset(path, "train", fmt)
    if ds.file_error:
        raise TunelabError(ds.file_error)
    if bad := [it.error for it in ds.items if it.error]:
        raise TunelabError(f"{len(bad)} invalid records; run `tunelab data check` first. First: {bad[0]}")
    known = SIMPLE_METHODS + MODEL_METHODS
    unknown = [m for m in options.methods if m not in known]
    if unknown:
        raise TunelabError(f"unknown augmentation(s) {', '.join(unknown)}; expected: {', '.join(known)}")
    if "template" in options.methods and not any("{text}" in t for t in options.templates):
        raise TunelabError("the template method needs templates containing {text}, e.g. 'Please help: {text}'")
    items = ds.valid
    seen = {text_hash(get_input(it, ds.format)) for it in items}
    result = AugmentResult([dict(it.row) for it in items])
    for method in options.methods:
        rejected = 0
        if method in SIMPLE_METHODS:
            rows = simple_variants(items, ds.format, options, method)
        else:
            from tunelab.quality.augment_llm import model_variants

            rows, rejected = model_variants(items, ds.format, options, method)
        kept = _dedup(rows, ds.format, seen)
        result.generated[method] = len(kept)
        result.discarded[method] = len(rows) - len(kept) + rejected
        result.rows += kept
    out = Path(output) if output else derived_path(path, "augmented")
    if out.resolve() == Path(path).resolve():
        raise TunelabError(f"{out}: augment writes a new file; the output must differ from the input")
    result.output = str(write_rows(result.rows, out))
    return result


def _dedup(rows: list[dict[str, Any]], fmt: str | None, seen: set[str]) -> list[dict[str, Any]]:
    """Drop generated rows whose input repeats an existing or earlier one (updates `seen`)."""
    kept = []
    for row in rows:
        text = get_input(Item("generated", 0, None, row), fmt)
        h = text_hash(text)
        if h not in seen and text.strip():
            seen.add(h)
            kept.append(row)
    return kept
