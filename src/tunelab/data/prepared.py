"""The one data-preparation skeleton: `data:` config -> read -> format -> encode -> split/mix -> count -> Prepared[T].

Every data kind (sft, pairs, unpaired, prompts, labelled, tagged) runs the same steps and supplies only what is
its own, a `Kind[T]`: its record check, its encoder (records -> items of type T with per-record facts), the
store the items live in, and its closing checks. Records are streamed: each dataset is read once, parsed and
encoded in batches in file order, and only the encoded items (and a few numbers per record) are kept, so the
memory a kind needs is its store's (a memory-mapped token file for sft, see `tunelab.data.store`).

Splitting works on record indices (`split_indices`, in flat arrays: no Python object per record), after
encoding: a dataset with weight w contributes round(w * n) examples per epoch (sampled without replacement
below 1, repeated above), after `eval_ratio` of each training dataset has been split off by seed (so repeats
never leak into eval). The counts of what was left out on purpose (too long, truncated, no trainable token)
are per pick, as if each pick were encoded.

Bad records stop the run with every format problem of a dataset listed (up to a limit) by file, line and
field; a record the kind refuses (wrong record type, a template that cannot render it) is reported after
the format problems of its dataset, naming its line.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from tunelab.config import DataConfig, DatasetConfig, RunConfig
from tunelab.data.formats import FORMATS, FieldError, detect_format, rename_columns
from tunelab.data.hints import mapping_hint
from tunelab.data.manifest import file_manifest
from tunelab.data.records import Record
from tunelab.data.sources import MAX_RECORD_BYTES, ReadOptions, Row, read_rows
from tunelab.data.template_checks import TemplateError
from tunelab.errors import DataError, TunelabError

T = TypeVar("T")
MAX_LISTED_ERRORS = 10
BATCH = 256  # records encoded together (one batched tokenizer call)
COUNT_BLOCK = 1 << 16  # picks counted together (bounds the counting's temporaries)
TRUNCATED, DROPPED, MASKED = 1, 2, 4  # Outcome.flags


@dataclass
class DatasetStats:
    path: str
    format: str
    records: int = 0
    train: int = 0
    eval: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    fully_masked: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    train_tokens: int = 0  # of `tokens`, those of the train split (the planner's count)
    lengths: np.ndarray | list[int] = field(default_factory=list, repr=False)  # of each kept item, train then eval

    def counts(self) -> dict[str, Any]:
        """The fields but `lengths` (not `asdict`, which would deep-copy the lengths array first)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lengths"}

    def summary(self) -> dict[str, Any]:
        d = self.counts()
        if len(self.lengths):
            arr = np.asarray(self.lengths)
            d["length"] = {"min": int(arr.min()), "mean": round(float(arr.mean()), 1),
                           "p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max())}  # fmt: skip
        return d


@dataclass
class Prepared(Generic[T]):
    """A run's train and eval items of one data kind (Examples, PairItems, PromptItems, ClassItems, ...)."""

    train: Sequence[T]
    eval: Sequence[T]
    stats: list[DatasetStats]
    manifest: list[dict[str, Any]]
    cached: bool = False
    eval_tasks: list[str] = field(default_factory=list)  # the task (dataset name) of each eval item

    def eval_groups(self) -> dict[str, list[int]]:
        """Eval item indices by task, in first-seen order (one group when there is a single task)."""
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(self.eval_tasks or [""] * len(self.eval)):
            groups.setdefault(task, []).append(i)
        return groups

    def report(self) -> dict[str, Any]:
        return {
            "datasets": [s.summary() for s in self.stats],
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "cached": self.cached,
        }


class Joined(Sequence[T]):
    """Two sequences read as one, without copying (train + eval items of a memory-mapped store)."""

    def __init__(self, a: Sequence[T], b: Sequence[T]) -> None:
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]

    def __iter__(self) -> Iterator[T]:
        yield from self.a
        yield from self.b


class Outcome(NamedTuple, Generic[T]):
    """One record encoded: its item (None when dropped or fully masked) and the facts the stats count."""

    item: T | None
    tokens: int = 0
    trainable: int = 0
    length: int = 0  # what `lengths` records (tokens, or the longer side of a pair)
    flags: int = 0  # TRUNCATED | DROPPED | MASKED
    extra: int = 0  # a kind's own count (ner: words cut)


class Store(Generic[T]):
    """Where a kind's encoded items live; the default keeps them in a list."""

    def __init__(self) -> None:
        self.items: list[T | None] = []

    def add(self, items: Sequence[T | None]) -> None:
        self.items += items

    def close(self) -> None:
        """All records are in: finish writing."""

    def take(self, indices: np.ndarray) -> Sequence[T]:
        return [self.items[i] for i in indices.tolist()]  # type: ignore[misc]  # only kept items are taken


class Kind(Generic[T]):
    """What a data kind supplies to the skeleton. `needs_plan`: the encoder depends on all training records
    (a classifier's label set), which are then read first and given to `plan`."""

    stats_type: type[DatasetStats] = DatasetStats
    needs_plan = False
    batch = BATCH

    def check(self, ds: DatasetConfig, fmt: str, record: Record, row: Row) -> None:
        """Refuse a dataset whose first record is not this kind's (raise row.error)."""

    def plan(self, records: list[Record]) -> None:
        """See all training records before encoding (only with needs_plan)."""

    def store(self) -> Store[T]:
        return Store()

    def encode(self, batch: list[tuple[Record, Row]]) -> list[Outcome[T]]:
        raise NotImplementedError

    def check_stats(self, stats: list[DatasetStats], data: DataConfig) -> None:
        """Closing checks over the counts (e.g. most examples fully masked)."""

    def finish(self, train: Sequence[T], evals: Sequence[T]) -> tuple[Sequence[T], Sequence[T]]:
        return train, evals


@dataclass
class _Facts:
    """Per-record facts of every record read (all datasets, in reading order)."""

    chunks: list[np.ndarray] = field(default_factory=list)  # int32: one record's counts fit, 20 bytes a record

    def add(self, outcomes: Sequence[Outcome[Any]]) -> None:
        self.chunks.append(np.array([o[1:] for o in outcomes], dtype=np.int32).reshape(-1, 5))

    def array(self) -> np.ndarray:
        table = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 5), dtype=np.int32)
        self.chunks = []  # not held twice
        return table


# --------------------------------------------------------------------------- records


def limited(rows: Iterator[Row], n: int | None) -> Iterator[Row]:
    for i, row in enumerate(rows):
        if n is not None and i >= n:
            return
        yield row


def iter_records(ds: DatasetConfig, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[str, Record, Row]]:
    """(format, record, row) of one dataset, streamed; every invalid row is collected and raised together at the
    end (a record over `max_record_bytes`, data.max_record_bytes, stops the reading before it is parsed)."""
    fmt = ds.format
    errors: list[str] = []
    n_errors, hint = 0, ""
    skip = set(ds.skip_records)
    for row in limited(read_rows(ds.path, ds.split, max_record_bytes, ReadOptions.of(ds)), ds.max_samples):
        if row.index in skip:
            continue
        data = row.data
        try:
            data = rename_columns(row.data, ds.columns)
            if fmt == "auto":
                fmt = detect_format(set(data)) or "auto"
                if fmt == "auto":
                    raise FieldError("", f"cannot detect the format from fields {', '.join(map(str, data))}; set "
                                     f"format: one of {', '.join(FORMATS)} (and columns: to map your field names)"
                                     + mapping_hint(None, data))  # fmt: skip
            record = FORMATS[fmt](data)
        except FieldError as e:
            n_errors += 1
            hint = hint or (mapping_hint(fmt, data) if "missing required field" in str(e) else "")
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(str(row.error(str(e), e.field or None)))
            continue
        if not n_errors:  # after a bad row only the rest of the errors are wanted
            yield fmt, record, row
    if n_errors:
        more = f"\n  ... and {n_errors - len(errors)} more" if n_errors > len(errors) else ""
        head = errors[0] if n_errors == 1 else f"{n_errors} invalid records in {ds.path}:\n  " + "\n  ".join(errors)
        raise DataError(head + more + (f"\n  {hint[2:]}" if hint else ""))


def load_records(ds: DatasetConfig, max_record_bytes: int = MAX_RECORD_BYTES) -> tuple[str, list[tuple[Record, Row]]]:
    """All records of one dataset with their rows (for small data: eval prompts, teacher prompts, previews)."""
    out = [(rec, row) for _, rec, row in iter_records(ds, max_record_bytes)]
    return _format_of(ds, out), out


def _format_of(ds: DatasetConfig, recs: list[tuple[Record, Row]]) -> str:
    if ds.format != "auto" or not recs:
        return ds.format
    return detect_format(set(rename_columns(recs[0][1].data, ds.columns))) or "auto"


@contextmanager
def at_row(row: Row) -> Iterator[None]:
    """A chat template that cannot render a record (tools it ignores, a turn it changes) names the record."""
    try:
        yield
    except TemplateError as e:
        raise row.error(str(e), e.field) from None


def split_and_mix(
    per_dataset: Sequence[Sequence[T]], weights: list[float], eval_ratio: float, seed: int
) -> tuple[list[tuple[int, T]], list[tuple[int, T]]]:
    """(dataset index, item) pairs for train (weighted) and eval (split off first); an item is a record,
    often with its row, or its index."""
    train, evals = split_indices([len(items) for items in per_dataset], weights, eval_ratio, seed)
    return ([(d, per_dataset[d][i]) for d, i in train.tolist()],
            [(d, per_dataset[d][i]) for d, i in evals.tolist()])  # fmt: skip


def split_indices(
    counts: Sequence[int], weights: list[float], eval_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`split_and_mix` on record indices: (dataset, index) rows (int64, shape (n, 2)) of train and eval.
    numpy arrays instead of lists of tuples (16 bytes a pick, not ~250), with the same random calls in the
    same order, so the split is the one the list version made: random.shuffle swaps an array's items exactly
    as a list's, and sampling positions of range(len(keep)) draws as sampling keep itself."""
    rng = random.Random(seed)
    train, evals = [], []
    for d, (n, w) in enumerate(zip(counts, weights)):
        order = np.arange(n, dtype=np.int64)
        rng.shuffle(order)  # type: ignore[arg-type]  # a 1-d array swaps like a list
        n_eval = round(n * eval_ratio)
        order[:n_eval].sort()  # in place: eval and keep are views of `order`
        order[n_eval:].sort()
        evals.append((d, order[:n_eval]))
        keep = order[n_eval:]
        target = round(w * len(keep))
        if len(keep) and target != len(keep):  # weight 1: keep as it is, no copy
            extra = keep[np.array(rng.sample(range(len(keep)), target % len(keep)), dtype=np.int64)]
            keep = np.concatenate([np.tile(keep, target // len(keep)), extra])
        train.append((d, keep))
    rows = _rows(train)
    # A permutation is shuffled, not the rows (swapping rows of a 2-d array swaps views and duplicates rows);
    # it is applied a column at a time, so only one column is copied at once.
    perm = np.arange(len(rows))
    rng.shuffle(perm)  # type: ignore[arg-type]
    for c in range(2):
        rows[:, c] = rows[perm, c]
    return rows, _rows(evals)


def _rows(parts: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """(dataset, index) rows of each part's indices, one after the other."""
    rows = np.empty((sum(len(ix) for _, ix in parts), 2), dtype=np.int64)
    start = 0
    for d, ix in parts:  # a column at a time: no (n, 2) temporary
        rows[start : start + len(ix), 0] = d
        rows[start : start + len(ix), 1] = ix
        start += len(ix)
    return rows


def task_names(data: DataConfig, sources: Sequence[int]) -> list[str]:
    """Task name per item from its dataset index (data.train first, then data.eval, as in `stats`)."""
    names = [ds.task_name() for ds in (*data.train, *data.eval)]
    return [names[d] for d in sources]


# --------------------------------------------------------------------------- the skeleton


def require_train(data: DataConfig) -> None:
    if not data.train:
        raise DataError("no training data: add at least one dataset under data.train", where="config")


def prepare_kind(cfg: RunConfig, kind: Kind[T], manifest: list[dict[str, Any]] | None = None) -> Prepared[T]:
    """Read, encode, split/mix and count the run's data for one kind; the items stay in the kind's store."""
    data = cfg.data
    require_train(data)
    manifest = manifest if manifest is not None else [file_manifest(ds.path) for ds in (*data.train, *data.eval)]
    store, facts = kind.store(), _Facts()
    preloaded = _plan(kind, data) if kind.needs_plan else {}
    stats: list[DatasetStats] = []
    for d, ds in enumerate((*data.train, *data.eval)):
        fmt, n = _encode_dataset(kind, ds, data, store, facts, preloaded.get(d))
        stats.append(kind.stats_type(ds.path, fmt, records=n))
    store.close()
    counts = [s.records for s in stats]
    n_train = len(data.train)
    picks, eval_picks = split_indices(counts[:n_train], [ds.weight for ds in data.train], data.eval_ratio,
                                      data.seed)  # fmt: skip
    eval_picks = np.concatenate([eval_picks, _rows([(d, np.arange(counts[d])) for d in range(n_train, len(counts))])])
    table, base = facts.array(), np.cumsum([0, *counts])
    train_idx, _ = _count(picks, table, base, stats, "train")
    eval_idx, sources = _count(eval_picks, table, base, stats, "eval")
    del picks, eval_picks, table  # only the kept store indices are needed from here on
    kind.check_stats(stats, data)
    train, evals = kind.finish(store.take(train_idx), store.take(eval_idx))
    return Prepared(train, evals, stats, manifest, eval_tasks=task_names(data, sources.tolist()))


def _plan(kind: Kind[Any], data: DataConfig) -> dict[int, list[tuple[str, Record, Row]]]:
    """The training records, read first for a kind whose encoder depends on all of them."""
    pre: dict[int, list[tuple[str, Record, Row]]] = {}
    for d, ds in enumerate(data.train):
        pre[d] = list(iter_records(ds, data.max_record_bytes))
        for fmt, rec, row in pre[d][:1]:
            kind.check(ds, fmt, rec, row)
    kind.plan([rec for recs in pre.values() for _, rec, _ in recs])
    return pre


def _encode_dataset(kind: Kind[T], ds: DatasetConfig, data: DataConfig, store: Store[T], facts: _Facts,
                    records: list[tuple[str, Record, Row]] | None) -> tuple[str, int]:  # fmt: skip
    """(format, records) of one dataset, its records encoded into `store` in file order. A record the kind
    refuses stops the encoding; it is raised once the whole file is read, after any format errors."""
    fmt, n, batch = ds.format, 0, []
    refused: TunelabError | None = None
    source = records if records is not None else iter_records(ds, data.max_record_bytes)
    for fmt, rec, row in source:
        n += 1
        if refused is not None:
            continue
        try:
            if n == 1:
                kind.check(ds, fmt, rec, row)
            batch.append((rec, row))
            if len(batch) >= kind.batch:
                _flush(kind, batch, store, facts)
        except TunelabError as e:
            refused = e
    if refused is None and batch:
        try:
            _flush(kind, batch, store, facts)
        except TunelabError as e:
            refused = e
    if refused is not None:
        raise refused
    return fmt, n


def _flush(kind: Kind[T], batch: list[tuple[Record, Row]], store: Store[T], facts: _Facts) -> None:
    outcomes = kind.encode(batch)
    store.add([o.item for o in outcomes])
    facts.add(outcomes)
    batch.clear()


def _count(pairs: np.ndarray, table: np.ndarray, base: np.ndarray, stats: list[DatasetStats],
           split: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Count the picks ((dataset, index) rows) into the stats as if each were encoded; (store indices, dataset)
    of the kept ones. A block of picks at a time into arrays made once, so the temporaries do not grow with
    the data (and many growing blocks do not fragment the heap)."""
    idx, d, length = np.empty(len(pairs), np.int64), np.empty(len(pairs), np.int64), np.empty(len(pairs), np.int64)
    n = 0
    for start in range(0, len(pairs), COUNT_BLOCK):
        kept = _count_block(pairs[start : start + COUNT_BLOCK], table, base, stats, split)
        m = len(kept[0])
        idx[n : n + m], d[n : n + m], length[n : n + m] = kept
        n += m
    idx, d, length = idx[:n], d[:n], length[:n]  # views: the left-out picks' slots are not worth a copy
    for i, s in enumerate(stats):
        mine = length[d == i]
        if len(mine):
            s.lengths = np.concatenate([s.lengths, mine]) if len(s.lengths) else mine
    return idx, d


def _count_block(pairs: np.ndarray, table: np.ndarray, base: np.ndarray, stats: list[DatasetStats],
                 split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Add one block's counts to the stats; (store index, dataset, length) of its kept picks."""
    d, idx = pairs[:, 0], base[pairs[:, 0]] + pairs[:, 1]
    tokens, trainable, length, flags, extra = (table[idx, k] for k in range(5))
    kept = (flags & (DROPPED | MASKED)) == 0
    n = len(stats)
    sums = {
        "truncated": np.bincount(d, (flags & TRUNCATED) > 0, n),
        "dropped_too_long": np.bincount(d, (flags & DROPPED) > 0, n),
        "fully_masked": np.bincount(d, (flags & MASKED) > 0, n),
        split: np.bincount(d, kept, n),
        "tokens": np.bincount(d, np.where(kept, tokens, 0), n),
        "trainable_tokens": np.bincount(d, np.where(kept, trainable, 0), n),
    }
    if split == "train":
        sums["train_tokens"] = sums["tokens"]
    if hasattr(stats[0], "words_cut"):
        sums["words_cut"] = np.bincount(d, np.where(kept, extra, 0), n)
    for i, s in enumerate(stats):
        for name, values in sums.items():
            setattr(s, name, getattr(s, name) + int(values[i]))
    return idx[kept], d[kept], length[kept]


def encode_only(cfg: RunConfig, kind: Kind[T], datasets: Sequence[DatasetConfig]) -> list[T]:
    """The kept items of extra datasets, in file order (eval.data with a run's label set)."""
    store, facts = kind.store(), _Facts()
    for ds in datasets:
        _encode_dataset(kind, ds, cfg.data, store, facts, None)
    store.close()
    table = facts.array()
    kept = np.flatnonzero((table[:, 3] & (DROPPED | MASKED)) == 0)
    return list(store.take(kept))
