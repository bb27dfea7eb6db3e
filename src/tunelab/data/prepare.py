"""Which preparation runs for a data kind: the records a method trains on (its registry entry in
tunelab.methods names the kind), from the `data:` config to items the training loop batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.heads import prepare_heads
from tunelab.data.pipeline import prepare
from tunelab.data.preference import prepare_preference
from tunelab.data.prepared import Prepared
from tunelab.data.prompts import prepare_prompts

# Every kind runs the one skeleton (tunelab.data.prepared.prepare_kind) with its own Kind: record type and encoder.
PREPARERS: dict[str, Callable[[RunConfig, Any], Prepared[Any]]] = {
    "sft": prepare,  # conversations, alpaca, prompt/completion, text -> Examples (cached)
    "pairs": lambda cfg, tok: prepare_preference(cfg, tok, "pairs"),
    "unpaired": lambda cfg, tok: prepare_preference(cfg, tok, "unpaired"),
    "labelled": lambda cfg, tok: prepare_heads(cfg, tok, "labelled"),
    "tagged": lambda cfg, tok: prepare_heads(cfg, tok, "tagged"),
    "prompts": prepare_prompts,
}
# What each kind reads, for the docs table (docs/methods.md) and messages.
DATA_DESCRIPTIONS = {
    "sft": "conversations, alpaca, prompt/completion, text",
    "pairs": "preference pairs (`preference`)",
    "unpaired": "unpaired good/bad (`kto`)",
    "labelled": "labelled texts (`labelled`)",
    "tagged": "BIO-tagged tokens (`token_tags`)",
    "prompts": "prompts (`prompt`, or the prompt side of other data)",
}


def prepare_data(cfg: RunConfig, tokenizer: Any, kind: str) -> Prepared[Any]:
    """The prepared train/eval items of data `kind` (a Prepared, or a HeadPrepared with the label names)."""
    return PREPARERS[kind](cfg, tokenizer)
