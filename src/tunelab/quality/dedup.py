"""Exact and near-duplicate detection.

Exact duplicates share the hash of their normalized text (see `items.normalize`). Near-duplicates are
found with MinHash signatures (128 multiply-shift hash functions, computed with numpy) and LSH banding over character 5-grams of the
normalized text: character shingles work for the one-line texts of classification data as well as for long
documents, where word shingles would leave a short sentence with a handful of features. LSH only proposes
candidates; each candidate pair is then confirmed with the exact Jaccard similarity of the two shingle
sets, so reported pairs really are at or above the threshold (LSH may still miss a few true pairs near
the threshold, which is its usual trade-off).

Memory does not grow with the texts: they are read in chunks (`texts` may be a lazy sequence), each chunk's
signatures are reduced to one 64-bit key per LSH band (the bands datasketch's MinHashLSH would choose), and
shingles are computed again only for the candidate pairs. Identical texts are banded once (a group of exact
copies would otherwise make every copy a candidate of every other) and expanded back at the end. With
`workers` > 1 the signatures of a chunk are computed in forked worker processes, with backend ray on Ray Data
(`tunelab.data.parallel`); either way the keys, and so the pairs, are the same.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import numpy as np
from datasketch.lsh import _optimal_param

from tunelab.data.parallel import Workers
from tunelab.quality.items import normalize, text_hash

T = TypeVar("T")
SHINGLE = 5
NUM_PERM = 128
CHUNK = 4096  # texts whose signatures are computed together


def shingles(text: str, n: int = SHINGLE) -> set[bytes]:
    return _shingle_set(normalize(text), n)


def _shingle_set(norm: str, n: int = SHINGLE) -> set[bytes]:
    if len(norm) <= n:
        return {norm.encode("utf-8")} if norm else set()
    return {norm[i : i + n].encode("utf-8") for i in range(len(norm) - n + 1)}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def exact_groups(items: Sequence[T], key: Callable[[T], str]) -> list[list[T]]:
    """Groups (in first-seen order) of two or more items whose normalized keys are equal."""
    groups: dict[str, list[T]] = {}
    for it in items:
        text = key(it)
        if text.strip():
            groups.setdefault(text_hash(text), []).append(it)
    return [g for g in groups.values() if len(g) > 1]


def near_pairs(texts: Sequence[str], threshold: float, seed: int = 1, workers: int = 1,
               backend: str = "local") -> list[tuple[int, int, float]]:  # fmt: skip
    """(i, j, jaccard) with i < j for texts at or above `threshold` but not identical after normalizing.
    `workers` processes (or Ray Data with backend ray) compute the signatures; the result is the same."""
    groups = near_groups(texts, threshold, seed, workers, backend)
    return sorted((min(x, y), max(x, y), sim) for ga, gb, sim in groups for x in ga for y in gb)


def near_groups(texts: Sequence[str], threshold: float, seed: int = 1, workers: int = 1,
                backend: str = "local") -> list[tuple[Sequence[int], Sequence[int], float]]:  # fmt: skip
    """`near_pairs` before exact copies are expanded: (indices of a text and its exact copies, those of a text
    near it, jaccard). A text with many copies makes pairs in the product of the two groups; a caller that
    needs one line per record (a check of a million records) reads the groups instead."""
    bands, rows = _optimal_param(threshold, NUM_PERM, 0.5, 0.5)
    pool = Workers(partial(_key_rows, bands=bands, rows=rows, seed=seed), workers, backend)
    try:
        keys, firsts, copies = _band_keys(texts, bands, pool)
    finally:
        pool.close()
    pairs: set[tuple[int, int]] = set()
    for b in range(bands):
        pairs |= _equal_runs(keys[:, b])
    out: list[tuple[Sequence[int], Sequence[int], float]] = []
    for a, b in sorted(pairs):
        i, j = int(firsts[a]), int(firsts[b])
        if (sim := jaccard(shingles(texts[i]), shingles(texts[j]))) >= threshold:
            out.append((copies.get(a, (i,)), copies.get(b, (j,)), round(sim, 3)))
    return out


def _band_keys(texts: Sequence[str], bands: int, pool: Workers) -> tuple[np.ndarray, np.ndarray, dict[int, list[int]]]:
    """One key per band for each distinct non-empty text, computed a chunk at a time; with the index of each
    distinct text's first occurrence and, only for texts that have exact copies, all their indices (a list per
    text would cost more than the keys)."""
    seen: dict[int, int] = {}  # 64-bit hash of the normalized text -> distinct text number
    firsts = array("q")
    copies: dict[int, list[int]] = {}
    keys: list[np.ndarray] = []
    for start in range(0, len(texts), CHUNK):
        fresh = []
        for i in range(start, min(start + CHUNK, len(texts))):
            norm = normalize(texts[i])
            if not norm:
                continue
            h = hash64(norm)
            if (k := seen.get(h)) is not None:
                copies.setdefault(k, [firsts[k]]).append(i)
            else:
                seen[h] = len(firsts)
                firsts.append(i)
                fresh.append(norm)
        if fresh:
            keys.append(np.stack(pool.map(fresh)))
    table = np.concatenate(keys) if keys else np.zeros((0, bands), dtype=np.uint64)
    return table, np.frombuffer(firsts, dtype=np.int64) if firsts else np.zeros(0, np.int64), copies


def hash64(norm: str) -> int:
    """A normalized text's 64-bit hash as an int (half the memory of `text_hash`'s hex string in a big dict)."""
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")


def _key_rows(norms: Sequence[str], bands: int, rows: int, seed: int) -> list[np.ndarray]:
    return list(band_keys(list(norms), bands, rows, seed))


def _permutations(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """NUM_PERM multiply-shift hash functions (odd 64-bit multipliers, 64-bit offsets), fixed by the seed."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return a, rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def signature(norm: str, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash of a normalized text's character 5-grams: NUM_PERM minima of multiply-shift hashes of the
    5-grams' 64-bit hashes, all in numpy (no per-shingle Python work)."""
    cp = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    n = min(SHINGLE, len(cp))
    with np.errstate(over="ignore"):  # 64-bit multiply-add: wrapping is the point
        h = np.zeros(len(cp) - n + 1, dtype=np.uint64)
        for k in range(n):  # polynomial hash of each window, then a 64-bit finalizer (splitmix64)
            h = h * np.uint64(0x100000001B3) + cp[k : len(cp) - n + 1 + k]
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        a, b = perms
        return np.asarray(((a[:, None] * h[None, :] + b[:, None]) >> np.uint64(32)).min(axis=1), dtype=np.uint64)


def band_keys(norms: list[str], bands: int, rows: int, seed: int) -> np.ndarray:
    """(texts, bands) uint64: a hash of each band of each normalized text's MinHash signature."""
    perms = _permutations(seed)
    sigs = np.stack([signature(t, perms) for t in norms]) if norms else np.zeros((0, NUM_PERM), dtype=np.uint64)
    out = np.zeros((len(norms), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(len(norms), b + 1, dtype=np.uint64)
            for col in sigs[:, b * rows : (b + 1) * rows].T:
                h = (h * np.uint64(0x100000001B3)) ^ col
            out[:, b] = h
    return out


def _equal_runs(keys: np.ndarray) -> set[tuple[int, int]]:
    """(a, b), a < b, for rows sharing a key in this band."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if not len(same):
        return set()
    pairs: set[tuple[int, int]] = set()
    starts = same[np.concatenate([[True], np.diff(same) > 1])]
    for s in starts.tolist():
        e = s + 1
        while e < len(ordered) and ordered[e] == ordered[s]:
            e += 1
        members = sorted(order[s:e].tolist())
        pairs |= {(a, b) for k, a in enumerate(members) for b in members[k + 1 :]}
    return pairs


def clusters(n: int, pairs: Sequence[tuple[int, int, float]] | Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (sorted lists, two or more members) of the graph on 0..n-1 with these edges."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        a, b = find(pair[0]), find(pair[1])
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]
