"""Preference data: chosen/rejected share the prompt, only the final reply is labelled, pairs stack
into one batch, per-row log-probs match the full logits, and the pipeline counts and rejects properly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.config import RunConfig
from tunelab.data.preference import (
    collate_pairs,
    collate_unpaired,
    encode_pair,
    encode_unpaired,
    mismatched,
    prepare_preference,
)
from tunelab.data.records import Message, Preference, UnpairedPreference
from tunelab.data.tokenize import IGNORE, Encoder
from tunelab.errors import TunelabError
from tunelab.methods.logps import sequence_logps
from tunelab.models.presets import build_preset


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_preset("tiny", seed=2)
    return model.eval(), tok


def labelled_text(tok, ex) -> str:
    return tok.decode([t for t in ex.labels if t != IGNORE])


def test_pair_shares_prompt_and_labels_only_final_reply(tiny) -> None:
    _, tok = tiny
    prompt = (Message("user", "hi"), Message("assistant", "hello there"), Message("user", "pick"))
    rec = Preference(prompt, (Message("assistant", "good"),), (Message("assistant", "badbad"),))
    pair = encode_pair(Encoder(tok, tok.chat_template), rec)
    c, r = pair.chosen.input_ids, pair.rejected.input_ids
    first = next(i for i, x in enumerate(pair.chosen.labels) if x != IGNORE)
    assert c[:first] == r[:first]  # identical prompt tokens
    assert labelled_text(tok, pair.chosen) == "good<|im_end|>"  # the earlier assistant turn is context
    assert labelled_text(tok, pair.rejected) == "badbad<|im_end|>"


def test_collate_stacks_chosen_then_rejected_and_logps_match_full_logits(tiny) -> None:
    model, tok = tiny
    enc = Encoder(tok, tok.chat_template)
    recs = [Preference((Message("user", f"q{i}" * (i + 1)),), (Message("assistant", "yes" * (i + 1)),),
                       (Message("assistant", "no"),)) for i in range(3)]  # fmt: skip
    items = [encode_pair(enc, r) for r in recs]
    batch = collate_pairs(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 6
    assert batch["input_ids"][4, : len(items[1].rejected.input_ids)].tolist() == items[1].rejected.input_ids
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch)
        logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    for row in range(6):
        lab = batch["labels"][row]
        want = sum(float(logp[row, t - 1, lab[t]]) for t in range(1, lab.shape[0]) if lab[t] != IGNORE)
        assert float(sums[row]) == pytest.approx(want, abs=1e-4)
        assert int(counts[row]) == int((lab[1:] != IGNORE).sum())


def test_unpaired_mismatched_rows_join_prompt_i_with_completion_i_plus_1(tiny) -> None:
    _, tok = tiny
    enc = Encoder(tok, tok.chat_template)
    items = [encode_unpaired(enc, UnpairedPreference((Message("user", u),), (Message("assistant", a),), lab))
             for u, a, lab in [("one", "AAA", True), ("two", "BB", False)]]  # fmt: skip
    kl = mismatched(items)
    assert tok.decode(kl[0].input_ids).endswith("one<|im_end|>\n<|im_start|>assistant\nBB<|im_end|>\n")
    assert labelled_text(tok, kl[1]) == "AAA<|im_end|>"
    batch = collate_unpaired(items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["desirable"].tolist() == [True, False]


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prepare_counts_truncation_and_drops(tiny, tmp_path: Path) -> None:
    _, tok = tiny
    rows = [{"prompt": "p" * 10, "chosen": "c" * 5, "rejected": "r" * 5} for _ in range(4)]
    rows.append({"prompt": "p" * 200, "chosen": "c", "rejected": "r"})  # prompt cut from the left
    rows.append({"prompt": "p", "chosen": "c", "rejected": "r" * 300})  # rejected reply cut at the end
    path = write(tmp_path / "pref.jsonl", rows)
    cfg = RunConfig.model_validate({"method": {"name": "dpo"}, "data": {"train": [{"path": path}], "max_length": 64}})
    prep = prepare_preference(cfg, tok, "pairs")
    s = prep.stats[0]
    assert (len(prep.train), s.train, s.fully_masked, s.truncated, s.records) == (6, 6, 0, 2, 6)
    assert all(len(p.rejected.input_ids) <= 64 and p.chosen.n_trainable > 0 for p in prep.train)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"truncation": "drop"})})
    s = prepare_preference(cfg, tok, "pairs").stats[0]
    assert (s.train, s.dropped_too_long) == (4, 2)


def test_prepare_rejects_sft_records_for_dpo(tiny, tmp_path: Path) -> None:
    _, tok = tiny
    path = write(tmp_path / "sft.jsonl", [{"instruction": "a", "output": "b"}])
    cfg = RunConfig.model_validate({"method": {"name": "dpo"}, "data": {"train": [{"path": path}]}})
    with pytest.raises(TunelabError, match="method dpo needs preference"):
        prepare_preference(cfg, tok, "pairs")


def test_prepare_real_demo_preference_file(tiny) -> None:
    from tests.conftest import shared_path

    path = shared_path("data", "preference_demo", "dpo_en_demo.json")
    _, tok = tiny
    cfg = RunConfig.model_validate({"method": {"name": "dpo"}, "data": {"train": [{"path": str(path), "max_samples": 40}], "max_length": 256}})  # fmt: skip
    prep = prepare_preference(cfg, tok, "pairs")
    s = prep.stats[0]
    assert s.records == 40 and s.train == 40 and s.truncated > 0  # long prompts keep their end
    assert all(len(p.chosen.input_ids) <= 256 and p.chosen.n_trainable > 0 for p in prep.train)
    assert torch.is_tensor(collate_pairs(prep.train[:2], tok.pad_token_id)["input_ids"])


def test_clip_keeps_bos_and_prompt_end_then_cuts_reply() -> None:
    from tunelab.data.preference import clip
    from tunelab.data.tokenize import Example

    ex = Example([1] + list(range(10, 30)) + [50, 51, 52, 53], [IGNORE] * 21 + [50, 51, 52, 53])
    out = clip(ex, 10, bos=1)
    assert out.input_ids == [1, 25, 26, 27, 28, 29, 50, 51, 52, 53] and out.labels[-4:] == [50, 51, 52, 53]
    long_reply = Example([1, 2, 3] + list(range(100, 120)), [IGNORE] * 3 + list(range(100, 120)))
    assert clip(long_reply, 8, bos=1).input_ids == [1, 2, 3, 100, 101, 102, 103, 104]  # short prompt stays whole
