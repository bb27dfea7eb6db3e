"""Constrained decoding with llguidance: JSON mode, json_schema and forced tool calls.

Why llguidance (evaluated for transformers 5.25 + torch 2.13 CPU, on this project's byte-level and BPE
tokenizers):
- llguidance (Microsoft's guidance-ai, used inside vLLM, SGLang and llama.cpp): one 3 MB abi3 wheel with
  no dependencies, reads any fast HF tokenizer (`llguidance.hf.from_tokenizer`), compiles a JSON schema or
  a Lark grammar in milliseconds and computes a token mask per step in microseconds on CPU. Its Lark
  dialect embeds JSON schemas (`%json {...}`), which is exactly what a forced tool call needs
  (`<tool_call>` + arguments-by-schema + `</tool_call>`).
- xgrammar 0.2.8: also fast, but its install pulls triton (a GPU compiler, hundreds of MB) and
  apache-tvm-ffi onto a CPU-only machine.
- outlines 1.x: builds on outlines-core plus a large dependency tree; its transformers integration wants
  to own generation (`outlines.from_transformers`), where we need a per-row mask inside our own loop.
- lm-format-enforcer: pure Python (slower per token), JSON schema and regex only, no grammar for the
  tag-wrapped tool call.

How it is used: each constrained row holds a matcher; before sampling, the matcher's allowed-token bitmask
sets every other logit to -inf; after sampling the token is consumed. When the grammar is complete the
matcher stops and the row finishes with "stop" (EOS is allowed only where the grammar may end). JSON is
written in one layout, Python's `json.dumps` default (`{"a": 1, "b": [2, 3]}`, no other whitespace), which
is what most generated training data and OpenAI's own structured outputs look like. Free whitespace (even
a bounded run per gap) let an untuned model spend most of its tokens on blanks: a forced tool call took
~250 tokens instead of ~50, and ran out of max_tokens before the JSON closed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tunelab.errors import TunelabError

# json.dumps' layout: no whitespace but the separators (see the module docstring)
JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Constraint:
    """What the output must match. kind: json_object | json_schema (spec: schema JSON text) | lark | regex."""

    kind: Literal["json_object", "json_schema", "lark", "regex"]
    spec: str = ""

    def grammar(self) -> str:
        import llguidance

        if self.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.spec, defaults=JSON_OPTIONS)
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.spec)
        return llguidance.LLMatcher.grammar_from_regex(self.spec)


def response_format_constraint(response_format: dict[str, Any] | None) -> Constraint | None:
    """OpenAI `response_format` -> a Constraint (None for text). Raises TunelabError naming what is wrong."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return Constraint("json_object")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise TunelabError("response_format.json_schema.schema: expected a JSON schema object")
        return Constraint("json_schema", json.dumps(schema))
    raise TunelabError(f"response_format.type: {kind!r} is not one of text, json_object, json_schema")


class Grammars:
    """Per-engine: the llguidance tokenizer (built once, ~1 s for a large vocabulary), grammar checks and matchers."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], vocab_size: int) -> None:
        self.tokenizer, self.eos_ids, self.vocab_size = tokenizer, sorted(eos_ids), vocab_size
        self._lltok: Any = None
        self._lock = threading.Lock()

    def lltok(self) -> Any:
        with self._lock:  # built lazily, from the API thread (check) or the engine thread (matcher)
            if self._lltok is None:
                import llguidance.hf

                try:
                    self._lltok = llguidance.hf.from_tokenizer(
                        self.tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids
                    )
                except ValueError as e:
                    raise TunelabError(f"constrained decoding needs a fast tokenizer: {e}") from None
            return self._lltok

    def check(self, c: Constraint) -> str | None:
        """Why the constraint cannot be used (message), or None."""
        import llguidance

        try:
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(c.grammar(), self.lltok())
        except (ValueError, TunelabError) as e:
            return f"{c.kind}: {e}"
        return f"{c.kind}: {messages[0]}" if is_error else None

    def matcher(self, c: Constraint) -> Matcher:
        import llguidance

        m = llguidance.LLMatcher(self.lltok(), c.grammar(), log_level=0)
        if m.is_error():
            raise TunelabError(f"{c.kind}: {m.get_error()}")
        return Matcher(m, self.vocab_size)

    def token_bytes(self, token: int) -> bytes:
        return bytes(self.lltok().decode_bytes([token]))


class Matcher:
    """One row's grammar state."""

    def __init__(self, m: Any, vocab_size: int) -> None:
        import llguidance.numpy as lnp

        self.m, self._lnp = m, lnp
        self.bitmask = lnp.allocate_token_bitmask(1, vocab_size)

    def allowed(self, width: int) -> torch.Tensor | None:
        """Boolean mask of `width` entries (the logits' width), or None when nothing is allowed (error)."""
        if self.m.is_error():
            return None
        self._lnp.fill_next_token_bitmask(self.m, self.bitmask)
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[:width].astype(bool)
        mask = torch.zeros(width, dtype=torch.bool)
        mask[: bits.shape[0]] = torch.from_numpy(bits)
        return mask if bool(mask.any()) else None

    def consume(self, token: int) -> bool:
        return bool(self.m.consume_token(token))

    def stopped(self) -> bool:
        return bool(self.m.is_stopped())

    def error(self) -> str:
        return str(self.m.get_error()) if self.m.is_error() else ""
