"""A vLLM backend for the same `Engine` protocol -- the GPU scale path. UNTESTED: written against vLLM's
async engine API (vllm >= 0.6: AsyncLLMEngine, AsyncEngineArgs, SamplingParams, LoRARequest) without a GPU
to run it on; treat it as a documented starting point, not a supported backend.

Why it fits the protocol: vLLM already does what HFEngine's batcher does, better (continuous batching,
paged KV cache), and serves many LoRA adapters over one base in the same batch (`enable_lora`, with a
`LoRARequest` per request). So `generate` maps one-to-one onto `engine.generate(...)`, streaming is its
async iterator of cumulative outputs (we forward the new suffix to `on_delta`), and adapters are a
name -> LoRARequest table; `add_lora`/`remove_lora` pre-load and evict them. The app, guard, limits and
store are unchanged. Chat prompts are encoded with the run's tokenizer here (not vLLM's chat
endpoint) so the template is exactly the training one.

Differences to know: vLLM's `seed` is per request as here; its `stop` strings are matched on text and
excluded from the output as in the OpenAI API. Adapters must be safetensors and within `max_lora_rank`.
`n`, penalties, `logit_bias` and logprobs map onto vLLM's SamplingParams; JSON mode, json_schema and
forced tool calls onto its structured outputs (`StructuredOutputsParams`, vLLM >= 0.10; its default
backend is xgrammar, with llguidance selectable). Tool calls are parsed from the text with tools.py as in
HFEngine. `tenant` is accepted and ignored: vLLM schedules first come, first served.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.serve.core import Choice, GenResult
from tunelab.serve.decode import Chunk, SamplingParams, check_params
from tunelab.serve.tools import parse_tool_calls

try:  # vLLM needs a GPU and is not a tunelab dependency
    from vllm import AsyncEngineArgs, AsyncLLMEngine
    from vllm import SamplingParams as VllmSampling
    from vllm.lora.request import LoRARequest
except ImportError:  # pragma: no cover - exercised only where vllm is installed
    AsyncLLMEngine = None


class VllmEngine:
    """Engine protocol over vLLM (untested, see module docstring)."""

    def __init__(self, model_dir: str, tokenizer: Any, base_name: str = "base", max_lora_rank: int = 64) -> None:
        if AsyncLLMEngine is None:
            raise TunelabError("the vLLM backend needs `pip install vllm` on a machine with a CUDA GPU")
        args = AsyncEngineArgs(model=model_dir, enable_lora=True, max_loras=8, max_lora_rank=max_lora_rank)
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.tokenizer, self.base_name = tokenizer, base_name
        self.loras: dict[str, Any] = {}
        self._ids = itertools.count(1)

    def model_ids(self) -> list[str]:
        return [self.base_name, *self.loras]

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        extra = {"tools": tools} if tools else {}
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra))

    def encode_text(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def max_context(self) -> int:
        return int(self.tokenizer.model_max_length)

    def validate(self, params: SamplingParams) -> str | None:
        return check_params(params, len(self.tokenizer), 64)

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
        # n > 1, streamed logprobs and on_chunk are left to a tested implementation; this sketch decodes choice 0
        sampling = VllmSampling(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop),
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            logit_bias=dict(params.logit_bias) or None,
            logprobs=params.top_logprobs if params.logprobs else None,
            structured_outputs=_structured(params),
        )
        rid, text, final = uuid.uuid4().hex, "", None
        stream = self.engine.generate(
            {"prompt_token_ids": prompt_ids}, sampling, rid, lora_request=self.loras.get(model)
        )
        async for out in stream:
            if is_cancelled():
                await self.engine.abort(rid)
                break
            new = out.outputs[0].text
            if len(new) > len(text):
                if on_chunk is not None:
                    on_chunk(Chunk(0, new[len(text) :]))
                elif on_delta is not None:
                    on_delta(new[len(text) :])
            text, final = new, out
        done = final.outputs[0] if final is not None else None
        finish = (done.finish_reason if done else None) or "cancelled"
        content, calls = parse_tool_calls(text, params.tools) if params.tools else (text, [])
        finish = "tool_calls" if calls else finish
        ids = tuple(done.token_ids) if done else ()
        choice = Choice(0, content, finish, ids, None, tuple(calls))
        if on_chunk is not None:  # the whole text went out as it came (no holdback of tool-call markup here)
            on_chunk(Chunk(0, "", (), finish, tuple(calls)))
        return GenResult(content, finish, len(prompt_ids), len(ids), (choice,))

    async def load_adapter(self, name: str, path: Path) -> None:
        req = LoRARequest(name, next(self._ids), str(path))
        await self.engine.add_lora(req)
        self.loras[name] = req

    async def unload_adapter(self, name: str) -> None:
        req = self.loras.pop(name)
        await self.engine.remove_lora(req.lora_int_id)

    async def close(self) -> None:
        self.engine.shutdown_background_loop()


def _structured(params: SamplingParams) -> Any:
    c = params.constraint
    if c is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if c.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if c.kind == "json_schema":
        return StructuredOutputsParams(json=c.spec)
    if c.kind == "regex":
        return StructuredOutputsParams(regex=c.spec)
    return StructuredOutputsParams(grammar=c.spec)  # Lark with %json needs the llguidance backend
