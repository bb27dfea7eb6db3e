"""One loader for every kind of name a user gives: a preset, a model folder, a packaged model, a hub id, a run
directory, a run's final/ folder, or a bare peft adapter folder.

`resolve(name)` says what the name is without loading weights (serving needs the base and the adapter apart, to
hot-swap adapters); `load(name)` returns (model, tokenizer) in eval mode. A run directory holds `config.yaml` (the
resolved config) and `final/`: a full Hugging Face model, or a peft adapter over the base named in the config (a
preset is rebuilt from its seed; a folder or hub id is loaded again). A head run (classify, ner, reward;
final/head.json) comes back as its classification or reward model, and `purpose` refuses it where text must be
generated. `like` carries the caller's model settings (dtype, attention, revision) to a name that has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ModelConfig, load_config
from tunelab.errors import TunelabError
from tunelab.models.heads import head_kind, load_head_model, read_head_info, refuse_head
from tunelab.models.load import load_model, load_tokenizer
from tunelab.models.presets import is_preset


@dataclass(frozen=True)
class Target:
    name: str
    base: ModelConfig  # what to load as the (base) model
    tokenizer: ModelConfig  # where the tokenizer (and chat template) comes from
    adapter: Path | None = None  # a peft adapter folder over `base`
    head: dict[str, Any] | None = None  # head.json of a head run
    run: Path | None = None  # the run directory, when the name is one (or its final/)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "final").is_dir()


def run_of(path: str | Path) -> Path | None:
    """The run directory `path` is, or whose final/ it is."""
    p = Path(path).expanduser()
    if is_run_dir(p):
        return p
    if p.name == "final" and is_run_dir(p.parent):
        return p.parent
    return None


def resolve(name: str | Path, like: ModelConfig | None = None) -> Target:
    run = run_of(name)
    if run is not None:
        return _run_target(run, like)
    like = like or ModelConfig()
    p = Path(name).expanduser()
    if (p / "adapter_config.json").is_file():
        return _adapter_target(p, like)
    mcfg = like.model_copy(update={"name_or_path": str(name)})
    return Target(str(name), mcfg, mcfg, head=read_head_info(p) if p.is_dir() else None)


def _run_target(run: Path, like: ModelConfig | None) -> Target:
    base = load_config(run / "config.yaml").model
    final = run / "final"
    if like is not None:  # the run's seed, revision and remote-code setting stay; dtype and kernel are this machine's
        base = base.model_copy(update={"dtype": like.dtype, "attn_implementation": like.attn_implementation})
    tok = base.model_copy(update={"name_or_path": str(final)})
    if (final / "adapter_config.json").is_file():
        return Target(str(run), base, tok, adapter=final, head=read_head_info(final), run=run)
    return Target(str(run), tok, tok, head=read_head_info(final), run=run)


def _adapter_target(folder: Path, like: ModelConfig) -> Target:
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise TunelabError(f"{folder}: adapter_config.json names no base model (base_model_name_or_path)")
    mcfg = like.model_copy(update={"name_or_path": str(base)})
    has_tok = (folder / "tokenizer_config.json").is_file()
    tok = like.model_copy(update={"name_or_path": str(folder)}) if has_tok else mcfg
    return Target(str(folder), mcfg, tok, adapter=folder, head=read_head_info(folder))


def load(name: str | Path, like: ModelConfig | None = None, dtype: torch.dtype | None = None,
         purpose: str | None = None, merge: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(model, tokenizer) of whatever `name` is, in eval mode. `purpose` (generate, chat, serve, export, eval)
    refuses a head model that cannot do it; `merge` folds an adapter into the base weights."""
    if purpose:
        refuse_head(name, purpose)
    t = resolve(name, like)
    tokenizer = load_tokenizer(t.tokenizer)
    model = _base(t, tokenizer, dtype)
    if t.adapter is not None:
        from peft import PeftModel  # heavy: only when there is an adapter

        model = PeftModel.from_pretrained(model, str(t.adapter))
        if merge:
            model = model.merge_and_unload()
    return model.eval(), tokenizer


def _base(t: Target, tokenizer: Any, dtype: torch.dtype | None) -> Any:
    if t.head is None:
        return load_model(t.base, dtype=dtype)
    return load_head_model(t.base, head_kind(t.head), t.head["labels"], tokenizer.pad_token_id, dtype,
                           log=lambda _: None)  # fmt: skip


def load_run(path: str | Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a finished run; an adapter comes back as a peft model over its base."""
    if run_of(path) is None:
        raise TunelabError(f"{path}: not a run directory (expected config.yaml and final/)")
    return load(path, dtype=dtype)


def random_init_preset(name_or_path: str | Path) -> str | None:
    """The randomly initialised preset a model starts from, if it does: the preset itself, or the base model of
    the tunelab run that saved it (a run directory or its final/ or merged/ folder), followed through earlier
    runs (stages). None for anything else, e.g. a pretrained model folder or hub id."""
    name = str(name_or_path)
    for _ in range(16):  # a chain of runs, each trained from the previous one's result
        if is_preset(name):
            return name
        p = Path(name).expanduser()
        run = p if is_run_dir(p) else p.parent if p.name in ("final", "merged") and is_run_dir(p.parent) else None
        if run is None:
            return None
        try:
            name = load_config(run / "config.yaml").model.name_or_path
        except TunelabError:
            return None
    return None
