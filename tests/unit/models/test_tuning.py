"""Tuning modes: what trains, what stays frozen, and that each mode can fit a handful of examples."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.conftest import shared_path

from tunelab.config import FreezeSettings, LoraSettings, ModelConfig, TuningConfig
from tunelab.data.tokenize import Example
from tunelab.errors import TunelabError
from tunelab.methods import default_method
from tunelab.models.presets import build_preset
from tunelab.models.tuning import TUNING_MODES, apply_tuning, count_parameters, describe_trainable, load_for_tuning

SFT = default_method("sft")
MODES = ["full", "freeze", "lora", "dora", "prefix", "prompt", "ia3"]
# learning rates that let each mode fit 4 short examples in 40 Adam steps from the pretrained stories260k
LR = {"full": 3e-3, "freeze": 1e-2, "lora": 1e-2, "dora": 1e-2, "prefix": 1e-1, "prompt": 3e-1, "ia3": 1e-1}


TEXTS = ["Q: cat? A: meow meow", "Q: dog? A: woof woof", "Q: cow? A: moo moo moo", "Q: owl? A: hoot hoot"]


def handful(tok: Any = None) -> dict[str, torch.Tensor]:
    tok = tok or build_preset("tiny")[1]
    exs = []
    for text in TEXTS:
        ids = tok(text).input_ids
        exs.append(Example(ids, [-100] * 5 + ids[5:]))  # loss on the answer only
    return SFT.collate(exs, pad_id=0)


def fit(model: torch.nn.Module, lr: float, steps: int = 40, tok: Any = None) -> tuple[float, float]:
    batch = handful(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    n = int((batch["labels"][:, 1:] != -100).sum())
    losses = []
    for _ in range(steps):
        loss = SFT.loss(model, batch).loss_sum / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def tuned(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    torch.manual_seed(0)  # adapter / virtual-token init
    cfg = TuningConfig(mode=mode, num_virtual_tokens=4, freeze=FreezeSettings(trainable_layers=1))
    return apply_tuning(model, cfg).train()


@pytest.mark.parametrize("mode", MODES)
def test_mode_changes_exactly_its_trainable_parameters(mode: str) -> None:
    model = tuned(build_preset("tiny", seed=0)[0], mode)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and (mode == "full") == (len(trainable) == len(before))
    fit(model, LR[mode], steps=3)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed == trainable, sorted(changed ^ trainable)[:5]


@pytest.mark.parametrize("mode", MODES)
def test_mode_overfits_a_handful_from_a_pretrained_model(mode: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared_path("models", "stories260k")
    model = tuned(AutoModelForCausalLM.from_pretrained(path), mode)
    first, last = fit(model, LR[mode], steps=40, tok=AutoTokenizer.from_pretrained(path))
    assert last < 0.3 * first, (mode, first, last)


def test_freeze_selects_last_blocks_and_final_norm() -> None:
    model = apply_tuning(
        build_preset("tiny")[0], TuningConfig(mode="freeze", freeze=FreezeSettings(trainable_layers=1))
    )
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.1.", "model.norm.")) for n in names)
    assert "model.norm.weight" in names and not any(n.startswith("model.layers.0.") for n in names)


def test_freeze_head_with_tied_embeddings_trains_the_shared_matrix() -> None:
    cfg = TuningConfig(mode="freeze", freeze=FreezeSettings(trainable_layers=0, train_head=True))
    model = apply_tuning(build_preset("tiny")[0], cfg)
    assert model.get_input_embeddings().weight.requires_grad  # tied: one tensor
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.embed_tokens.weight"]


def test_freeze_rejects_too_many_layers_and_nothing_to_train() -> None:
    with pytest.raises(TunelabError, match="only 2 blocks"):
        apply_tuning(build_preset("tiny")[0], TuningConfig(mode="freeze", freeze=FreezeSettings(trainable_layers=5)))
    with pytest.raises(TunelabError, match="nothing would train"):
        apply_tuning(build_preset("tiny")[0], TuningConfig(mode="freeze", freeze=FreezeSettings(trainable_layers=0)))


def test_lora_settings_reach_peft() -> None:
    cfg = TuningConfig(mode="lora", lora=LoraSettings(r=4, alpha=8, rslora=True, target_modules=["q_proj", "v_proj"]))
    model = apply_tuning(build_preset("tiny")[0], cfg)
    pc = model.peft_config["default"]
    assert (pc.r, pc.lora_alpha, pc.use_rslora, set(pc.target_modules)) == (4, 8, True, {"q_proj", "v_proj"})
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora_names and all("q_proj" in n or "v_proj" in n for n in lora_names)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(8 / 2)


def test_all_linear_skips_the_head_and_bad_targets_are_clear() -> None:
    model = apply_tuning(build_preset("tiny")[0], TuningConfig(mode="lora"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("mlp.down_proj" in n for n in names) and not any("lm_head" in n for n in names)
    with pytest.raises(TunelabError, match="peft could not adapt"):
        apply_tuning(build_preset("tiny")[0], TuningConfig(mode="lora", lora=LoraSettings(target_modules=["nope"])))


def test_qlora_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the real path is tested by test_qlora_on_gpu")
    with pytest.raises(TunelabError, match="needs a CUDA GPU.*tuning.mode: lora"):
        load_for_tuning(ModelConfig(name_or_path="tiny"), TuningConfig(mode="qlora"))
    with pytest.raises(TunelabError, match="loaded 4-bit"):
        apply_tuning(build_preset("tiny")[0], TuningConfig(mode="qlora"))


@pytest.mark.gpu
def test_qlora_on_gpu() -> None:
    model = load_for_tuning(ModelConfig(name_or_path="tiny", dtype="bfloat16"), TuningConfig(mode="qlora"))
    assert model.is_loaded_in_4bit
    model = apply_tuning(model, TuningConfig(mode="qlora"))
    batch = {k: v.cuda() for k, v in handful().items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        SFT.loss(model, batch).loss_sum.backward()
        opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_registry_and_description() -> None:
    assert set(TUNING_MODES) == {"full", "freeze", "lora", "dora", "qlora", "prefix", "prompt", "ia3"}
    model = apply_tuning(build_preset("tiny")[0], TuningConfig(mode="lora", lora=LoraSettings(r=2)))
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    assert describe_trainable(model).startswith(f"trainable params: {trainable:,} of {total:,} (")
