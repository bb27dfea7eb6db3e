"""Exact and near-duplicate detection.

Exact duplicates share the hash of their normalized text (see `items.normalize`). Near-duplicates are
found with MinHash signatures and LSH banding from `datasketch`, over character 5-grams of the normalized
text: character shingles work for the one-line texts of classification data as well as for long
documents, where word shingles would leave a short sentence with a handful of features. LSH only proposes
candidates; each candidate pair is then confirmed with the exact Jaccard similarity of the two shingle
sets, so reported pairs really are at or above the threshold (LSH may still miss a few true pairs near
the threshold, which is its usual trade-off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from datasketch import MinHash, MinHashLSH

from tunelab.quality.items import normalize, text_hash

T = TypeVar("T")
SHINGLE = 5
NUM_PERM = 128


def shingles(text: str, n: int = SHINGLE) -> set[bytes]:
    norm = normalize(text)
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


def near_pairs(texts: Sequence[str], threshold: float, seed: int = 1) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) with i < j for texts at or above `threshold` but not identical after normalizing."""
    sets = [shingles(t) for t in texts]
    present = [i for i, s in enumerate(sets) if s]
    hashes = MinHash.bulk([list(sets[i]) for i in present], num_perm=NUM_PERM, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    with lsh.insertion_session() as session:
        for i, mh in zip(present, hashes, strict=False):
            session.insert(i, mh, check_duplication=False)
    norms = [normalize(t) for t in texts]
    pairs = []
    for i, mh in zip(present, hashes, strict=False):
        for j in lsh.query(mh):
            if j > i and norms[i] != norms[j] and (sim := jaccard(sets[i], sets[j])) >= threshold:
                pairs.append((i, j, round(sim, 3)))
    return sorted(pairs)


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
