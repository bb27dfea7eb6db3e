"""SFT data: from the `data:` config to trainable Examples (conversations, alpaca, prompt/completion, text),
through the one preparation skeleton (`tunelab.data.prepared`) with the SFT kind below.

What is left out on purpose (too long with truncation: drop, truncated, no trainable token) is counted per
dataset and reported; if most examples end up with no trainable token the run fails with the likely cause.
Tokenized data is cached under a content hash of the data files, the tokenizer, the template and the config
fields that affect tokens, as memory-mapped int32 arrays (`tunelab.data.store`) that training reads directly:
a second run neither parses nor tokenizes a record again.

Encoding is batched: records are rendered (once per span boundary they need) and tokenized together, the loss
mask found from token bounds; with `data.num_proc` > 1, worker processes encode batches in parallel. With
truncation: drop, a text that cannot fit (more characters than max_length tokens can cover) is dropped before
it is tokenized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.config import DataConfig, DatasetConfig, RunConfig
from tunelab.data.manifest import file_manifest, sha256_file
from tunelab.data.parallel import Workers
from tunelab.data.prepared import (
    DROPPED,
    MASKED,
    TRUNCATED,
    DatasetStats,
    Kind,
    Outcome,
    Prepared,
    at_row,
    load_records,
    prepare_kind,
    require_train,
    split_and_mix,
    task_names,
)
from tunelab.data.records import SFT_RECORDS, Record
from tunelab.data.sources import Row
from tunelab.data.store import TokenStore, load_prepared, publish, save_prepared
from tunelab.data.tokenize import Encoded, Encoder, Example, TemplateError, chat_template_for
from tunelab.errors import DataError

__all__ = ["DatasetStats", "Prepared", "at_row", "file_manifest", "load_records", "prepare", "sha256_file",
           "split_and_mix", "task_names"]  # fmt: skip
ENCODING_VERSION = "4"  # bump when tokenization changes, to invalidate caches (4: memory-mapped store)


class SFTKind(Kind[Any]):
    """Conversations, prompt/completion and text records -> Examples in a memory-mapped TokenStore (which keeps
    them as `Encoded` arrays and reads them back as Examples)."""

    def __init__(self, encoder: Encoder, data: DataConfig, folder: Path) -> None:
        self.encoder, self.data, self.folder = encoder, data, folder
        self.max_chars = _max_token_chars(encoder.tok) * data.max_length  # more characters never fit
        self.workers = Workers(self.encode_records, data.num_proc, data.backend)
        self.batch = 256 * data.num_proc if data.backend == "local" else 8192  # a Ray job per batch: big ones

    def check(self, ds: DatasetConfig, fmt: str, record: Record, row: Row) -> None:
        if not isinstance(record, SFT_RECORDS):
            use = "method grpo" if type(record).__name__ == "Prompt" else "preference methods"
            raise row.error(f"{type(record).__name__} records (format {ds.format}) are for {use}, not "
                            "method sft; use a conversation/prompt_completion/text dataset")  # fmt: skip

    def store(self) -> TokenStore:
        return TokenStore(self.folder)

    def encode(self, batch: list[tuple[Record, Row]]) -> list[Outcome[Encoded]]:
        results = self.workers.map([rec for rec, _ in batch])
        for (_, row), result in zip(batch, results):
            if isinstance(result, TemplateError):  # the first record the template cannot render stops the run
                raise row.error(str(result), result.field)
        return results

    def encode_records(self, records: Sequence[Record]) -> list[Outcome[Encoded] | TemplateError]:
        """Records -> outcomes (in a worker with num_proc > 1): rendered, tokenized together, then truncated,
        dropped or masked per the data config; a record the template cannot render ends the list."""
        texts, refused = [], []
        for rec in records:
            try:
                texts.append(self.encoder.text(rec))
            except TemplateError as e:
                refused = [e]
                break
        drop = self.data.truncation == "drop"
        todo = [i for i, (t, _) in enumerate(texts) if not (drop and self.max_chars and len(t) > self.max_chars)]
        out: list[Outcome[Encoded] | TemplateError] = [Outcome(None, flags=DROPPED)] * len(texts)
        for i, enc in zip(todo, self.encoder.tokenize_many([texts[i] for i in todo])):
            out[i] = self._outcome(enc)
        return out + refused

    def _outcome(self, enc: Encoded) -> Outcome[Encoded]:
        flags, limit = 0, self.data.max_length
        if len(enc.ids) > limit:
            if self.data.truncation == "drop":
                return Outcome(None, flags=DROPPED)
            flags, enc = TRUNCATED, Encoded(enc.ids[:limit], enc.mask[:limit])
        trainable = int(enc.mask.sum())
        if trainable == 0:  # never trained on silently: counted, reported, and checked below
            return Outcome(None, flags=flags | MASKED)
        return Outcome(enc, len(enc.ids), trainable, len(enc.ids), flags)

    def check_stats(self, stats: list[DatasetStats], data: DataConfig) -> None:
        for s in stats:
            seen = s.train + s.eval + s.fully_masked
            if seen and s.fully_masked / seen > data.max_fully_masked:
                raise DataError(
                    f"{s.fully_masked} of {seen} examples have no trainable token after tokenization. Likely "
                    f"causes: the assistant replies were truncated away (max_length {data.max_length} is too small "
                    "for the prompts), or the chat template does not render assistant turns as expected (try "
                    "model.chat_template: fallback).",
                    where=s.path,
                )


def _max_token_chars(tokenizer: Any) -> int:
    """The most characters one token covers, or 0 when that cannot be bounded (a normalizer may map several
    characters to one, an unknown-word token a whole word): then nothing is dropped before tokenizing."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None or getattr(backend.model, "unk_token", None) is not None:
        return 0  # an unknown-word token may cover a whole word
    return max(len(t) for t in backend.get_vocab(with_added_tokens=True))


def prepare(cfg: RunConfig, tokenizer: Any, use_cache: bool = True) -> Prepared[Example]:
    """The whole SFT data pipeline for a run: what `validate`, `prepare` and `train` all call."""
    data = cfg.data
    require_train(data)
    manifest = [file_manifest(ds.path) for ds in (*data.train, *data.eval)]
    template = chat_template_for(tokenizer, cfg.model.chat_template)
    root = _cache_dir(data)
    final = root / _cache_key(data, manifest, tokenizer, template)
    if use_cache and (cached := load_prepared(final, manifest)) is not None:
        return cached
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        kind = SFTKind(Encoder(tokenizer, template, data.train_on_inputs), data, tmp)
        try:
            prepared = prepare_kind(cfg, kind, manifest)
        finally:
            kind.workers.close()
        save_prepared(tmp, prepared)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if use_cache:
        publish(tmp, final)
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # the arrays stay mapped: the files live until they are released
    return prepared


# --------------------------------------------------------------------------- cache


def _cache_dir(data: DataConfig) -> Path:
    base = data.cache_dir or os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab"
    return Path(base) / "tokenized"


def _cache_key(data: DataConfig, manifest: list[dict[str, Any]], tokenizer: Any, template: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([m["sha256"] or m["path"] for m in manifest]).encode())
    h.update(data.model_dump_json(exclude={"cache_dir", "num_proc", "backend"}).encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode() if getattr(tokenizer, "is_fast", False) else b"")
    h.update(template.encode())
    h.update(f"{__version__}/{ENCODING_VERSION}".encode())
    return h.hexdigest()[:32]
