"""SFT loss: equals plain cross-entropy on full logits at labelled positions, for padded, packed,
peft-wrapped, prompt-learning and chunked cases, with equal gradients where it matters."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tunelab.config import TuningConfig
from tunelab.data.collate import pack
from tunelab.data.tokenize import Example
from tunelab.methods import default_method
from tunelab.methods import sft as sft_mod
from tunelab.models.presets import build_preset
from tunelab.models.tuning import apply_tuning

SFT = default_method("sft")


def examples(n: int = 5, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [1] + [rng.randrange(3, 250) for _ in range(rng.randrange(6, 30))]
        prompt = rng.randrange(1, len(ids) - 2)
        out.append(Example(ids, [-100] * prompt + ids[prompt:]))
    return out


def reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed CE from the model's own full logits: logits[t] predicts labels[t + 1]."""
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**kw).logits
    tgt = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
    )


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=1)[0].eval()


def test_loss_equals_full_logits_ce_padded(tiny) -> None:
    exs = examples()
    batch = SFT.collate(exs, pad_id=0)
    out = SFT.loss(tiny, batch).loss_sum
    torch.testing.assert_close(out, reference(tiny, batch), rtol=1e-5, atol=1e-4)
    # the count is the number of positions whose next label is real
    assert sum(SFT.count(e) for e in exs) == int((batch["labels"][:, 1:] != -100).sum())


def test_loss_matches_hf_mean_loss(tiny) -> None:
    batch = SFT.collate(examples(3), pad_id=0)
    hf = tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    n = int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(SFT.loss(tiny, batch).loss_sum / n, hf, rtol=1e-5, atol=1e-5)


def test_packed_loss_equals_sum_of_unpacked(tiny) -> None:
    exs = examples(6, seed=3)
    packed = pack(exs, max_length=80)
    assert len(packed) < len(exs)
    packed_loss = SFT.loss(tiny, SFT.collate(packed, pad_id=0)).loss_sum
    # pack() masks each example's first label, which position 0 never predicts anyway: same targets
    single = sum(SFT.loss(tiny, SFT.collate([e], pad_id=0)).loss_sum for e in exs)
    torch.testing.assert_close(packed_loss, single, rtol=1e-4, atol=1e-3)
    assert sum(SFT.count(p) for p in packed) == sum(SFT.count(e) for e in exs)


@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
def test_peft_models(mode: str) -> None:
    model = apply_tuning(build_preset("tiny", seed=1)[0], TuningConfig(mode=mode, num_virtual_tokens=4)).eval()
    if mode == "lora":  # make the adapter non-zero so the check sees it
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    batch = SFT.collate(examples(4), pad_id=0)
    out = SFT.loss(model, batch).loss_sum
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["input_ids"].shape[1] :]  # prompt tuning prepends virtual tokens
    tgt = batch["labels"][:, 1:]
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
    )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_chunked_projection_equals_single_pass(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = SFT.collate(examples(4), pad_id=0)

    def loss_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        tiny.zero_grad()
        loss = SFT.loss(tiny, batch).loss_sum
        loss.backward()
        return loss.detach(), tiny.get_output_embeddings().weight.grad.clone()

    whole = loss_and_grad()
    monkeypatch.setattr(sft_mod, "CHUNK_ELEMENTS", tiny.config.vocab_size * 7)  # 7 tokens per chunk
    chunked = loss_and_grad()
    torch.testing.assert_close(whole[0], chunked[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(whole[1], chunked[1], rtol=1e-4, atol=1e-5)


def test_fully_masked_batch_gives_zero_with_graph(tiny) -> None:
    ex = Example([1, 5, 6, 7], [-100] * 4)
    out = SFT.loss(tiny, SFT.collate([ex], pad_id=0)).loss_sum
    assert out.item() == 0.0 and out.requires_grad
    assert SFT.count(ex) == 0
