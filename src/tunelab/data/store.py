"""Tokenized SFT data on disk: int32 token ids and a uint8 loss mask, memory-mapped, read by training directly.

A store is a folder: `ids.bin` (int32) and `mask.bin` (uint8: 1 = the token carries loss) hold every encoded
record back to back in reading order, `offsets.npy` (int64, records + 1) where each starts; a record left out
(dropped, fully masked) has no tokens. The prepared split is `train.npy` / `eval.npy` (store indices, in
training order) and `meta.json` (the counts). Nothing is parsed again on a warm start: the arrays are mapped
and an `Example` (Python lists, what collate and packing read) is built only when an item is read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, overload

import numpy as np

from tunelab.data.prepared import DatasetStats, Joined, Prepared, Store
from tunelab.data.tokenize import IGNORE, Example

FORMAT_VERSION = 2  # 2: per-dataset train_tokens in the stats (caches of 1 are rebuilt)


class ExampleSeq(Sequence[Example]):
    """Examples read from a store's mapped arrays: item i is record `order[i]`."""

    def __init__(self, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, index: np.ndarray) -> None:
        self.ids, self.mask, self.offsets, self.order = ids, mask, offsets, index

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> ExampleSeq: ...
    def __getitem__(self, i: int | slice) -> Example | ExampleSeq:
        if isinstance(i, slice):
            return ExampleSeq(self.ids, self.mask, self.offsets, self.order[i])
        r = int(self.order[i])
        a, b = int(self.offsets[r]), int(self.offsets[r + 1])
        ids = self.ids[a:b]
        return Example(ids.tolist(), np.where(self.mask[a:b] > 0, ids, IGNORE).tolist())

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self.order)):
            yield self[i]

    def __add__(self, other: Sequence[Example]) -> Joined[Example]:
        return Joined(self, other)

    def __radd__(self, other: Sequence[Example]) -> Joined[Example]:
        return Joined(other, self)

    def lengths(self) -> np.ndarray:
        return (self.offsets[self.order + 1] - self.offsets[self.order]).astype(np.int64)


class TokenStore(Store[Example]):
    """Appends encoded records to the files of a folder; `take` reads them back mapped."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._ids: BinaryIO = (folder / "ids.bin").open("wb")
        self._mask: BinaryIO = (folder / "mask.bin").open("wb")
        self._sizes: list[np.ndarray] = []
        self.arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, items: Sequence[Any]) -> None:
        sizes = np.zeros(len(items), dtype=np.int64)
        for k, enc in enumerate(items):
            if enc is not None:
                self._ids.write(enc.ids.astype(np.int32, copy=False).tobytes())
                self._mask.write(enc.mask.astype(np.uint8, copy=False).tobytes())
                sizes[k] = len(enc.ids)
        self._sizes.append(sizes)

    def close(self) -> None:
        self._ids.close()
        self._mask.close()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int64)
        self._sizes = []  # the offsets are read back mapped (open_arrays): no per-record array stays in memory
        np.save(self.folder / "offsets.npy", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        self.arrays = open_arrays(self.folder)

    def take(self, indices: np.ndarray) -> ExampleSeq:
        assert self.arrays is not None, "close() the store before reading it"
        return ExampleSeq(*self.arrays, indices.astype(np.int64, copy=False))


def _map(path: Path, dtype: Any) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # offsets mapped too (8 bytes a record): pages are read as items are, not all at once
    offsets = np.load(folder / "offsets.npy", mmap_mode="r")
    return _map(folder / "ids.bin", np.int32), _map(folder / "mask.bin", np.uint8), offsets


def save_prepared(folder: Path, p: Prepared[Example]) -> None:
    """The split and the counts beside the store's arrays (`p` was taken from the store in `folder`)."""
    assert isinstance(p.train, ExampleSeq) and isinstance(p.eval, ExampleSeq)
    np.save(folder / "train.npy", p.train.order)
    np.save(folder / "eval.npy", p.eval.order)
    lengths = [np.asarray(s.lengths, dtype=np.int64) for s in p.stats]
    np.save(folder / "lengths.npy", np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64))
    meta = {"version": FORMAT_VERSION, "eval_tasks": p.eval_tasks,
            "stats": [s.counts() | {"n_lengths": len(n)}
                      for s, n in zip(p.stats, lengths)]}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))


def load_prepared(folder: Path, manifest: list[dict[str, Any]]) -> Prepared[Example] | None:
    """A prepared run from its cache folder, mapped; None when the folder is not a complete cache."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = open_arrays(folder)
        train, evals = np.load(folder / "train.npy"), np.load(folder / "eval.npy")
        lengths = np.load(folder / "lengths.npy")
    except (OSError, ValueError):
        return None
    if meta.get("version") != FORMAT_VERSION:
        return None
    stats, start = [], 0
    for s in meta["stats"]:
        n = s.pop("n_lengths")
        stats.append(DatasetStats(**s, lengths=lengths[start : start + n]))
        start += n
    return Prepared(ExampleSeq(*arrays, train), ExampleSeq(*arrays, evals), stats, manifest, cached=True,
                    eval_tasks=meta["eval_tasks"])  # fmt: skip


def publish(tmp: Path, final: Path) -> None:
    """Move a finished cache folder into place atomically (a reader never sees a half-written cache)."""
    try:
        os.replace(tmp, final)
    except OSError:  # another process published the same key first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
