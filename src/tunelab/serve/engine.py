"""The engine protocol the server talks to, and its Hugging Face transformers implementation.

`Engine` is what the HTTP layer needs: model ids, prompt encoding with the served chat template, an async
`generate` (text deltas pushed to `on_delta` while decoding) and runtime adapter load/unload. The
`HFEngine` holds one base model and any number of LoRA adapters as a peft multi-adapter model: a request's
`model` field picks an adapter (`set_adapter`) or the base (`disable_adapter`). Concurrent requests go
through the `Batcher`, grouped by adapter, and each group decodes as one left-padded batch (decode.py).
A vLLM engine implementing the same protocol is sketched in vllm_engine.py.

The chat template and tokenizer are the ones saved with the served run (what training used). Adapters must
share the base's tokenizer: an adapter whose saved vocabulary size differs is refused at load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunelab.errors import TunelabError
from tunelab.serve.batcher import Batcher
from tunelab.serve.decode import Row, SamplingParams, run_batch

log = logging.getLogger("tunelab.serve")


@dataclass(frozen=True)
class GenResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    def model_ids(self) -> list[str]: ...

    def has_chat_template(self) -> bool: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def encode_text(self, prompt: str) -> list[int]: ...

    def max_context(self) -> int: ...

    async def generate(
        self,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_delta: Callable[[str], None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> GenResult: ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def close(self) -> None: ...


class HFEngine:
    """One base model + named LoRA adapters (peft), batched per adapter on one engine thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_name: str = "base",
        max_batch_size: int = 16,
        wait_ms: float = 5.0,
    ) -> None:
        self.model, self.tokenizer, self.base_name = model.eval(), tokenizer, base_name
        self.adapters: dict[str, str] = {}  # name -> folder
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        self.eos_ids = {e for e in [*eos, tokenizer.eos_token_id] if e is not None}
        self.batch_sizes: list[int] = []  # every batch run, for tests and benchmarks
        self.on_batch: Callable[[int], None] | None = None  # e.g. a metrics histogram
        self.batcher = Batcher(self._run_group, max_batch_size, wait_ms, on_batch=self._observe)

    # ------------------------------------------------------------------ protocol

    def model_ids(self) -> list[str]:
        return [self.base_name, *self.adapters]

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.has_chat_template():
            raise TunelabError("this model has no chat template; use /v1/completions with a plain prompt")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def encode_text(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    async def generate(
        self,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_delta: Callable[[str], None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> GenResult:
        if model not in self.model_ids():
            raise TunelabError(f"unknown model {model!r}; served: {', '.join(self.model_ids())}")
        loop = asyncio.get_running_loop()

        def hop(text: str) -> None:  # on_delta runs on the event loop, not in the decoding thread
            loop.call_soon_threadsafe(on_delta, text)  # type: ignore[arg-type]  # only set when on_delta is

        row = Row(list(prompt_ids), params, on_delta=None if on_delta is None else hop, is_cancelled=is_cancelled)
        await self.batcher.submit(model, row)
        return GenResult(row.text, row.finish_reason or "length", len(row.prompt_ids), len(row.ids))

    async def load_adapter(self, name: str, path: Path) -> None:
        await self.batcher.call(self._load_adapter, name, path)

    async def unload_adapter(self, name: str) -> None:
        await self.batcher.call(self._unload_adapter, name)

    async def close(self) -> None:
        await self.batcher.close()

    # ------------------------------------------------------------------ engine thread

    def _observe(self, size: int) -> None:
        self.batch_sizes.append(size)
        if self.on_batch is not None:
            self.on_batch(size)

    def generate_batch(self, model: str, rows: list[Row]) -> list[Row]:
        """Decode rows for one model id together (synchronous; the batcher calls it on the engine thread)."""
        return self._run_group(model, rows)

    def _run_group(self, model: str, rows: list[Row]) -> list[Row]:
        if model == self.base_name:
            if self.adapters:
                with self.model.disable_adapter():
                    run_batch(self.model, self.tokenizer, rows, self.eos_ids)
            else:
                run_batch(self.model, self.tokenizer, rows, self.eos_ids)
        else:
            if model not in self.adapters:  # unloaded while queued
                raise TunelabError(f"adapter {model!r} was unloaded")
            self.model.set_adapter(model)
            run_batch(self.model, self.tokenizer, rows, self.eos_ids)
        return rows

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self.adapters or name == self.base_name:
            raise TunelabError(f"model id {name!r} is already in use")
        if not (path / "adapter_model.safetensors").is_file():
            raise TunelabError(f"{path}: no adapter_model.safetensors (only safetensors adapters are loaded)")
        if hasattr(self.model, "peft_config"):
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False).eval()
        self.adapters[name] = str(path)
        log.info("loaded adapter %s from %s", name, path)

    def _unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise TunelabError(f"no adapter named {name!r}; loaded: {', '.join(self.adapters) or 'none'}")
        if len(self.adapters) == 1:
            # peft cannot delete its last adapter; drop the wrapper and keep the untouched base model
            self.model = self.model.unload().eval()
        else:
            other = next(a for a in self.adapters if a != name)
            self.model.set_adapter(other)
            self.model.delete_adapter(name)
        del self.adapters[name]
        log.info("unloaded adapter %s", name)
