"""Packed examples see only themselves: their logits equal the unpacked logits, on a real tiny model."""

import torch

from tunelab.data.collate import collate, collate_packed, pack
from tunelab.data.tokenize import IGNORE, Example
from tunelab.models.presets import build_preset


def examples():
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (7, 12, 5, 9):
        ids = torch.randint(0, 256, (n,), generator=g).tolist()
        out.append(Example(ids, [IGNORE] * 2 + ids[2:]))
    return out


def test_packed_logits_equal_unpacked_logits_per_example():
    model, tok = build_preset("tiny", seed=3)
    model.eval()
    exs = examples()
    rows = pack(exs, max_length=20)
    assert len(rows) == 2  # 7+12 and 5+9 fit; padding follows in the second row
    batch = collate_packed(rows, tok.pad_token_id, width=20)
    with torch.no_grad():
        # use_cache=False matters: with a cache, transformers skips packed-sequence detection.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        offsets = {0: (0, 0), 1: (0, 7), 2: (1, 0), 3: (1, 5)}
        for i, e in enumerate(exs):
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            r, start = offsets[i]
            torch.testing.assert_close(packed[r, start : start + len(e.input_ids)], alone, atol=1e-5, rtol=1e-4)


def test_pack_masks_the_first_token_of_each_example_and_restarts_positions():
    exs = examples()
    row = pack(exs[:2], max_length=24)[0]
    assert row.position_ids == list(range(7)) + list(range(12))
    assert row.labels[0] == IGNORE and row.labels[7] == IGNORE
    assert row.labels[9:] == exs[1].labels[2:]
    assert row.n_examples == 2 and pack(exs[:1], max_length=24)[0].n_examples == 1


def test_collate_pads_right_and_masks_padding():
    exs = examples()[:2]
    b = collate(exs, pad_id=0)
    assert b["input_ids"].shape == (2, 12)
    assert b["attention_mask"][0].tolist() == [1] * 7 + [0] * 5
    assert (b["labels"][0, 7:] == IGNORE).all()
