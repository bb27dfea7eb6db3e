"""The engine protocol the server talks to, and its Hugging Face transformers implementation.

`HFEngine` holds one base model and any number of LoRA adapters (a peft multi-adapter model). Requests are
decoded by iteration-level (continuous) batching (batcher.py): they join and leave one running batch at
every decode step, rows of different adapters share each forward pass (peft's mixed-adapter batches:
`adapter_names` per row), and admission is fair across tenants (batcher.FairQueue). The KV cache is one
left-padded DynamicCache (kvbatch.py); sampling, penalties, logprobs and stop strings are per row
(decode.py); JSON mode, json_schema and forced tool calls use llguidance (constrain.py); tool calls are
parsed from the chat template's `<tool_call>` format (tools.py). vllm_engine.py maps the same protocol
onto vLLM.

Interface for the HTTP layer (all names importable from this module):

    err = engine.validate(params)            # str | None: why the request cannot be decoded -> 400
    ids = engine.encode_chat(messages, tools=None)   # tools: OpenAI `tools`, rendered by the chat template
    ids = engine.encode_text(prompt)          # TunelabError (-> 400) for text that is not valid Unicode
    result = await engine.generate(
        model, ids, params,                   # params: SamplingParams (decode.py), every field defaulted
        on_delta=None,                        # Callable[[str], None]: choice 0's new text (simple streaming)
        is_cancelled=lambda: False,           # polled every step: True ends the request, finish "cancelled"
        tenant=None,                          # fairness key (the API key id); None -> the model id
        on_chunk=None,                        # Callable[[Chunk], None]: per choice text+logprobs, then finish
    )                                         # callbacks run on the event loop that called generate
    result: GenResult(text, finish_reason, prompt_tokens, completion_tokens, choices, prompt_logprobs)
        choices[i]: Choice(index, text, finish_reason, token_ids, logprobs, tool_calls)
    SamplingError (a TunelabError): this request could not be decoded; nothing else is affected.

Cancelling the task that awaits `generate` (client gone, timeout) also stops its decoding at the next step.
Building params from OpenAI fields: `response_format_constraint(body.response_format)`,
`tool_choice_constraint(tools, tool_choice)` -> SamplingParams.constraint; `tool_names(tools)` ->
SamplingParams.tools (parse calls; leave empty for tool_choice "none"); finish_reason "tool_calls" and
Choice.tool_calls when the output held calls. Adapter unload drains: the name disappears from
`model_ids()` at once (new requests 404) and the unload completes when its running requests have finished.

The chat template and tokenizer are the ones saved with the served run (what training used). Adapters must
share the base's tokenizer: an adapter whose saved vocabulary size differs is refused at load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tunelab.errors import TunelabError
from tunelab.models.generate import encode_prompt
from tunelab.serve.batcher import Batcher, FairQueue, Request
from tunelab.serve.constrain import Constraint, Grammars, response_format_constraint
from tunelab.serve.core import BASE_ADAPTER, Choice, DecodeCore, GenResult, Job, SamplingError
from tunelab.serve.decode import Chunk, Row, SamplingParams, TokenLogprob, check_params
from tunelab.serve.tools import parse_tool_calls, tool_choice_constraint, tool_names

__all__ = [
    "Choice", "Chunk", "Constraint", "Engine", "GenResult", "HFEngine", "SamplingError", "SamplingParams",
    "TokenLogprob", "parse_tool_calls", "response_format_constraint", "tool_choice_constraint", "tool_names",
]  # fmt: skip

log = logging.getLogger("tunelab.serve")
MAX_RECORDED_STEPS = 100_000  # batch_sizes keeps the latest steps only (a long-running server must not grow)


class Engine(Protocol):
    def model_ids(self) -> list[str]: ...

    def has_chat_template(self) -> bool: ...

    def encode_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]: ...

    def encode_text(self, prompt: str) -> list[int]: ...

    def max_context(self) -> int: ...

    def validate(self, params: SamplingParams) -> str | None: ...

    async def generate(
        self,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_delta: Callable[[str], None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
        tenant: str | None = None,
        on_chunk: Callable[[Chunk], None] | None = None,
    ) -> GenResult: ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def close(self) -> None: ...


class HFEngine:
    """One base model + named LoRA adapters (peft), continuously batched on one engine thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_name: str = "base",
        max_batch_size: int = 16,
        wait_ms: float = 5.0,
        extra_slots: int | None = None,
        max_prefill_tokens: int = 8192,
    ) -> None:
        self.model, self.tokenizer, self.base_name = model.eval(), tokenizer, base_name
        self.max_batch_size = max_batch_size
        self.adapters: dict[str, str] = {}  # name -> folder
        self.draining: set[str] = set()  # being unloaded: no new requests
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        self.eos_ids = {e for e in [*eos, tokenizer.eos_token_id] if e is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.vocab_size = max(len(tokenizer), int(getattr(model.config, "vocab_size", 0) or 0))
        self.grammars = Grammars(tokenizer, self.eos_ids, self.vocab_size)
        self._checked: dict[Constraint, str | None] = {}
        self.batch_sizes: list[int] = []  # rows per decode step, for tests and benchmarks
        self.on_batch: Callable[[int], None] | None = None  # e.g. a metrics histogram (called per step)
        self.core = DecodeCore(self)
        self.queue = FairQueue(max_batch_size, extra_slots, max_prefill_tokens)
        self.batcher = Batcher(self.core, self.queue, wait_ms)

    # ------------------------------------------------------------------ protocol

    def model_ids(self) -> list[str]:
        return [self.base_name, *(a for a in self.adapters if a not in self.draining)]

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        if not self.has_chat_template():
            raise TunelabError("this model has no chat template; use /v1/completions with a plain prompt")
        _check_text(messages, "messages")
        return encode_prompt(self.tokenizer, messages, None, tools or None)  # as training rendered it

    def encode_text(self, prompt: str) -> list[int]:
        _check_text(prompt, "prompt")
        return list(self.tokenizer(prompt)["input_ids"])

    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def validate(self, params: SamplingParams) -> str | None:
        """Why these parameters cannot be decoded (a message naming the field), or None. Call before generate."""
        if err := check_params(params, self.vocab_size, self.max_batch_size):
            return err
        c = params.constraint
        if c is not None:
            if c not in self._checked:
                self._checked[c] = self.grammars.check(c)
            return self._checked[c]
        return None

    async def generate(
        self,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_delta: Callable[[str], None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
        tenant: str | None = None,
        on_chunk: Callable[[Chunk], None] | None = None,
    ) -> GenResult:
        if model not in self.model_ids():
            raise TunelabError(f"unknown model {model!r}; served: {', '.join(self.model_ids())}")
        if err := self.validate(params):
            raise SamplingError(err)
        if not prompt_ids or not all(0 <= t < self.vocab_size for t in prompt_ids):
            raise SamplingError("prompt: empty, or a token id outside the vocabulary")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[GenResult] = loop.create_future()
        adapter = None if not self.is_peft() else (BASE_ADAPTER if model == self.base_name else model)
        delta = _hop(loop, on_delta) if on_delta is not None else None
        chunk = _hop(loop, on_chunk) if on_chunk is not None else None

        def make_row(i: int) -> Row:
            return Row(list(prompt_ids), params, delta if i == 0 else None, is_cancelled, i, chunk, adapter)

        def done(result: GenResult | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, fut, result)

        job = Job(adapter, model, list(prompt_ids), params, done, make_row)
        req = Request(tenant if tenant is not None else model, params.n, len(prompt_ids) * params.n, job)
        self.batcher.submit(req)
        try:
            return await fut
        except asyncio.CancelledError:  # the client went away or timed out: stop decoding it
            req.cancelled = True
            self.batcher.wake()
            raise

    async def load_adapter(self, name: str, path: Path) -> None:
        await asyncio.wrap_future(self.batcher.call(lambda: self._load_adapter(name, path)))

    async def unload_adapter(self, name: str) -> None:
        if name not in self.adapters or name in self.draining:
            raise TunelabError(f"no adapter named {name!r}; loaded: {', '.join(self.model_ids()[1:]) or 'none'}")
        self.draining.add(name)  # new requests for it are refused from now on

        def unused() -> bool:
            return not self.core.uses(name) and not any(r.payload.model == name for r in self.queue)

        try:
            await asyncio.wrap_future(self.batcher.call(lambda: self._unload_adapter(name), ready=unused))
        finally:
            self.draining.discard(name)

    async def close(self) -> None:
        await asyncio.to_thread(self.batcher.close)

    # ------------------------------------------------------------------ engine thread

    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def observe(self, size: int) -> None:
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > MAX_RECORDED_STEPS:
            del self.batch_sizes[: MAX_RECORDED_STEPS // 2]
        if self.on_batch is not None:
            self.on_batch(size)

    def token_bytes(self, token: int) -> bytes:
        try:
            return self.grammars.token_bytes(token)
        except Exception:  # a slow tokenizer llguidance cannot read: its decoding of the single token
            return str(self.tokenizer.decode([token])).encode("utf-8", errors="replace")

    def _load_adapter(self, name: str, path: Path) -> None:
        """All or nothing: a load that fails leaves no trace, so the name can be loaded again later."""
        from peft import PeftModel

        if name in self.adapters or name == self.base_name:
            raise TunelabError(f"model id {name!r} is already in use")
        if not (path / "adapter_model.safetensors").is_file():
            raise TunelabError(f"{path}: no adapter_model.safetensors (only safetensors adapters are loaded)")
        try:
            if self.is_peft():
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(path), adapter_name=name, is_trainable=False
                ).eval()
        except Exception as e:
            if self.is_peft() and name in self.model.peft_config:
                self.model.delete_adapter(name)
            raise TunelabError(f"{path}: adapter could not be loaded: {type(e).__name__}: {e}") from None
        self.adapters[name] = str(path)
        log.info("loaded adapter %s from %s", name, path)

    def _unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise TunelabError(f"no adapter named {name!r}; loaded: {', '.join(self.adapters) or 'none'}")
        if len(self.adapters) == 1:
            # peft cannot delete its last adapter; drop the wrapper and keep the untouched base model
            self.model = self.model.unload().eval()
        else:
            self.model.delete_adapter(name)
        del self.adapters[name]
        log.info("unloaded adapter %s", name)


def _hop(loop: asyncio.AbstractEventLoop, fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """A callback for the engine thread that runs `fn` on the event loop instead."""

    def call(x: Any) -> None:
        loop.call_soon_threadsafe(fn, x)

    return call


def _settle(fut: asyncio.Future, result: GenResult | BaseException) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def _check_text(obj: Any, where: str) -> None:
    """TunelabError naming the field when a string cannot be encoded (lone surrogates from JSON \\ud800 escapes)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TunelabError(f"{where}: not valid Unicode text ({e.reason} at character {e.start})") from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_text(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_text(v, f"{where}[{i}]")
