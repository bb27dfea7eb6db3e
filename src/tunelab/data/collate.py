"""Batches: padding, and packing several examples into one sequence without attention across them.

Packed sequences carry `position_ids` that restart at 0 for every example and no attention mask:
transformers then builds a block-diagonal causal mask itself (masking_utils.find_packed_sequence_indices),
so each example's logits equal its unpacked logits. The forward pass must use `use_cache=False`: with a KV
cache transformers skips that detection and the examples would attend to each other. The first token of every packed example gets label
-100: its label would otherwise be predicted from the previous example's last token. Padding at the end
of a packed row is its own segment (positions restart) and never carries loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.data.tokenize import IGNORE, Example


@dataclass
class Packed:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def n_examples(self) -> int:
        return sum(1 for p in self.position_ids if p == 0)


def collate(examples: list[Example], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels for unpacked examples."""
    width = max(len(e.input_ids) for e in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(examples: list[Example], max_length: int) -> list[Packed]:
    """Greedy first-fit in the given order (callers shuffle first); examples longer than max_length must
    have been truncated or dropped already."""
    rows: list[Packed] = []
    for e in examples:
        if len(e.input_ids) > max_length:
            raise ValueError(f"example of {len(e.input_ids)} tokens exceeds max_length {max_length}")
        row = next((r for r in rows if len(r.input_ids) + len(e.input_ids) <= max_length), None)
        if row is None:
            row = Packed([], [], [])
            rows.append(row)
        row.input_ids += e.input_ids
        row.labels += [IGNORE, *e.labels[1:]]
        row.position_ids += list(range(len(e.input_ids)))
    return rows


def collate_packed(seqs: list[Packed], pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    width = width or max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        pos[row, :n] = torch.tensor(s.position_ids)
        pos[row, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}
