"""The Python entry points: `train(cfg) -> run dir` and `generate(run_or_model, ...) -> text`.

The CLI is a thin veneer over these. `train` works the same in one process and under
`accelerate launch`; what the run directory holds is described in tunelab.train.rundir.
Full and freeze tuning load fp32 master weights even when bf16 compute is available (mixed precision
autocasts the matmuls); adapter modes keep the base in the configured dtype (peft keeps adapters fp32).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tunelab import config
from tunelab.config import RunConfig
from tunelab.data import preview
from tunelab.errors import TunelabError
from tunelab.methods import METHODS, check_run
from tunelab.models.load import load_tokenizer
from tunelab.stages import run_stages
from tunelab.train.loop import Hooks, TrainingInterrupted
from tunelab.train.run import train_one

__all__ = ["Hooks", "TrainingInterrupted", "debug_examples", "generate", "load_config", "load_generator", "stream", "train",
           "validate"]  # fmt: skip


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config from YAML plus `a.b=c` overrides, with the checks that depend on a method's facts."""
    return check_run(config.load_config(path, overrides))


def train(
    cfg: RunConfig, resume: bool = False, hooks: Hooks | None = None, config_path: str | Path | None = None
) -> Path:
    """Train per `cfg`; returns the run directory (with final/). Raises TrainingInterrupted on Ctrl-C or SIGTERM.
    With `stages:`, runs them in order (tunelab.stages) and returns the last stage's run directory."""
    if cfg.stages:
        return run_stages(cfg, config_path, resume)[-1]
    return train_one(cfg, resume, hooks, config_path)


def validate(cfg: RunConfig, tokenizer: Any = None) -> dict[str, Any]:
    """Build the whole data pipeline of `cfg` without training: counts and problems (`tunelab validate`)."""
    return preview.validate(cfg, tokenizer or load_tokenizer(cfg.model), METHODS[cfg.method.name].data)


def debug_examples(cfg: RunConfig, n: int, tokenizer: Any = None) -> list[tuple[str, str, Any]]:
    """The first n training records token by token (`tunelab prepare --debug N`)."""
    return preview.debug_examples(cfg, tokenizer or load_tokenizer(cfg.model), n, METHODS[cfg.method.name].data)


# ----------------------------------------------------------------------------------------- generation


def load_generator(run_or_model: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a run directory, a preset name or a model folder; eval mode."""
    from tunelab.models.loader import load

    return load(run_or_model, purpose="generate")


def _inputs(tok: Any, prompt: str | None, messages: list[dict[str, str]] | None, chat: bool | None) -> Any:
    """Messages, or a prompt as one user turn when the tokenizer has a chat template (unless chat=False);
    otherwise the raw prompt with the tokenizer's own special tokens (BOS), as in pretraining."""
    if messages is None and prompt is None:
        raise TunelabError("generate: give a prompt or messages")
    use_chat = messages is not None or (chat is not False and tok.chat_template is not None)
    if chat and tok.chat_template is None:
        raise TunelabError("generate: this model's tokenizer has no chat template; use a plain prompt")
    if use_chat:
        text = tok.apply_chat_template(
            messages or [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tok(text, add_special_tokens=False, return_tensors="pt")
    return tok(prompt, return_tensors="pt")


def _gen_kwargs(model: Any, tok: Any, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tok.eos_token_id
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, do_sample=temperature > 0)
    kw["pad_token_id"] = (
        tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    )
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p)
    else:  # greedy: clear sampling defaults a checkpoint's generation_config may carry
        kw.update(temperature=None, top_p=None, top_k=None)
    return kw


def generate(
    run_or_model: str | Path | tuple[Any, Any],
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool | None = None,
) -> str:
    """The model's continuation (new tokens only, special tokens skipped); greedy unless temperature > 0."""
    model, tok = run_or_model if isinstance(run_or_model, tuple) else load_generator(run_or_model)
    enc = _inputs(tok, prompt, messages, chat).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, **_gen_kwargs(model, tok, max_new_tokens, temperature, top_p))
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def stream(
    model: Any, tok: Any, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0
) -> Iterator[str]:
    """Yield text pieces as they are generated (chat template applied), stopping at EOS."""
    import threading

    from transformers import TextIteratorStreamer

    enc = _inputs(tok, None, messages, True).to(model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**enc, **_gen_kwargs(model, tok, max_new_tokens, temperature, 1.0), "streamer": streamer}
    worker = threading.Thread(target=lambda: model.generate(**kwargs), daemon=True)
    worker.start()
    yield from streamer
    worker.join()


def train_from_file(path: str | Path, overrides: list[str] | tuple[str, ...] = (), resume: bool = False) -> Path:
    return train(load_config(path, overrides), resume=resume, config_path=path)
