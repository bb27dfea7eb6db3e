"""distill (logits): the KD loss against a hand computation on fixed logits, the same loss through real models
(masking, packing, chunking, peft), trainable parameters, an overfit that lowers KL to a trained teacher,
and the vocabulary check."""

from __future__ import annotations

import math

import pytest
import torch
from tests.unit.methods.test_sft import examples

from tunelab.config import DistillConfig, MethodConfig, TuningConfig
from tunelab.data.collate import pack
from tunelab.data.tokenize import Example
from tunelab.errors import TunelabError
from tunelab.methods import default_method, distill
from tunelab.methods import sft as sft_mod
from tunelab.methods.distill import KD, kd_sums
from tunelab.models.presets import build_preset, preset_tokenizer
from tunelab.models.tuning import apply_tuning

STUDENT = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
TEACHER = [[0.0, 1.0, 0.0], [0.0, 3.0, -1.0]]
TARGETS = [2, 1]


def softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def hand(kind: str, t: float, mix: float = 0.5, ce_weight: float = 0.0) -> tuple[float, float, float]:
    """(loss, kl, ce) summed over the two rows, from the formulas written out in plain Python."""
    total_kl = total_ce = 0.0
    for s, te, y in zip(STUDENT, TEACHER, TARGETS):
        ps, pt = softmax(s, t), softmax(te, t)
        fwd, rev = kl(pt, ps), kl(ps, pt)
        total_kl += {"forward": fwd, "reverse": rev, "mix": mix * fwd + (1 - mix) * rev}[kind]
        total_ce += -math.log(softmax(s, 1.0)[y])
    return t * t * total_kl + ce_weight * total_ce, total_kl, total_ce


@pytest.mark.parametrize(
    ("kind", "t", "mix", "ce_weight"),
    [("forward", 1.0, 0.5, 0.0), ("reverse", 1.0, 0.5, 0.0), ("mix", 1.0, 0.3, 0.0), ("forward", 2.0, 0.5, 0.0),
     ("reverse", 0.5, 0.5, 0.0), ("mix", 3.0, 0.8, 0.5), ("forward", 1.0, 0.5, 1.0)],
)  # fmt: skip
def test_kd_sums_match_hand_computation(kind: str, t: float, mix: float, ce_weight: float) -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    out = kd_sums(s, torch.tensor(TEACHER), torch.tensor(TARGETS), KD(kind, mix, t, ce_weight))
    loss, kl_sum, ce = hand(kind, t, mix, ce_weight)
    torch.testing.assert_close(out[:3], torch.tensor([loss, kl_sum, ce]), rtol=1e-5, atol=1e-6)
    assert out[3].item() == 1.0  # row 0: student argmax 0, teacher 1; row 1: both 1
    out[0].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kd_gradient_matches_finite_difference() -> None:
    """The gradient of the summed loss w.r.t. one student logit, against a central difference of the hand formula."""
    s = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    kd = KD("mix", 0.3, 2.0, 0.5)
    kd_sums(s, torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(TARGETS), kd)[0].backward()
    eps = 1e-6
    STUDENT[1][2] += eps
    up = hand("mix", 2.0, 0.3, 0.5)[0]
    STUDENT[1][2] -= 2 * eps
    down = hand("mix", 2.0, 0.3, 0.5)[0]
    STUDENT[1][2] += eps
    assert s.grad is not None
    assert abs(s.grad[1, 2].item() - (up - down) / (2 * eps)) < 1e-6


# --------------------------------------------------------------------------- through models


def method(teacher: torch.nn.Module, **kw: object) -> distill.Method:
    return distill.kd_method(DistillConfig(teacher="t", **kw), teacher)  # type: ignore[arg-type]


def full_logits_reference(student: torch.nn.Module, teacher: torch.nn.Module, batch: dict, kd: KD) -> torch.Tensor:
    """KD from both models' full logits at labelled positions, written with softmax/log directly."""
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    mask = batch["labels"][:, 1:] != -100
    s = student(**kw, use_cache=False).logits[:, :-1][mask] / kd.temperature
    with torch.no_grad():
        t = teacher(**kw, use_cache=False).logits[:, :-1][mask] / kd.temperature
    ps, pt = s.softmax(-1), t.softmax(-1)
    fwd = (pt * (pt.log() - ps.log())).sum()
    rev = (ps * (ps.log() - pt.log())).sum()
    div = {"forward": fwd, "reverse": rev, "mix": kd.mix * fwd + (1 - kd.mix) * rev}[kd.kind]
    ce = torch.nn.functional.cross_entropy(s * kd.temperature, batch["labels"][:, 1:][mask], reduction="sum")
    return kd.temperature**2 * div + kd.ce_weight * ce


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return build_preset("tiny", seed=0)[0].eval(), distill.frozen(build_preset("tiny", seed=1)[0])


@pytest.mark.parametrize("kd", [KD("forward", 0.5, 1.0, 0.0), KD("reverse", 0.5, 2.0, 0.0), KD("mix", 0.7, 1.5, 0.3)])
def test_loss_equals_full_logits_reference_at_labelled_positions(pair, kd: KD) -> None:
    student, teacher = pair
    m = method(teacher, loss=kd.kind, mix=kd.mix, temperature=kd.temperature, ce_weight=kd.ce_weight)
    exs = examples()
    batch = m.collate(exs, 0)
    out = m.loss(student, batch)
    torch.testing.assert_close(out.loss_sum, full_logits_reference(student, teacher, batch, kd), rtol=1e-4, atol=1e-5)
    assert set(out.metrics) == {"kl", "ce", "top1_agreement"}
    assert sum(m.count(e) for e in exs) == int((batch["labels"][:, 1:] != -100).sum())


def test_masked_positions_do_not_count(pair) -> None:
    """Changing tokens after the last label (and the labels of masked positions) leaves the loss unchanged;
    an example with no label contributes exactly nothing."""
    student, teacher = pair
    m = method(teacher, ce_weight=1.0)
    ex = Example([1, 10, 11, 12, 13, 14], [-100, -100, 11, 12, -100, -100])
    other = Example([1, 10, 11, 12, 99, 98], [-100, -100, 11, 12, -100, -100])
    a, b = m.loss(student, m.collate([ex], 0)).loss_sum, m.loss(student, m.collate([other], 0)).loss_sum
    torch.testing.assert_close(a, b)  # position 3 predicts label 4 (masked): its token 13 vs 99 does not matter
    empty = Example([1, 5, 6, 7], [-100] * 4)
    out = m.loss(student, m.collate([empty], 0))
    assert out.loss_sum.item() == 0.0 and out.loss_sum.requires_grad and m.count(empty) == 0


def test_identical_teacher_gives_zero_kl(pair) -> None:
    student, _ = pair
    m = method(distill.frozen(build_preset("tiny", seed=0)[0]), loss="mix")
    out = m.loss(student, m.collate(examples(), 0))
    assert abs(out.loss_sum.item()) < 1e-5
    assert out.metrics["top1_agreement"].item() == sum(m.count(e) for e in examples())


def test_packed_batch_equals_sum_of_unpacked(pair) -> None:
    """The teacher sees the same packed rows (block-diagonal attention), so packing changes nothing."""
    student, teacher = pair
    m = method(teacher, loss="mix", temperature=2.0, ce_weight=0.5)
    exs = examples(6, seed=3)
    packed = pack(exs, max_length=80)
    assert len(packed) < len(exs)
    whole = m.loss(student, m.collate(packed, 0))
    single = [m.loss(student, m.collate([e], 0)) for e in exs]
    torch.testing.assert_close(whole.loss_sum, sum(o.loss_sum for o in single), rtol=1e-4, atol=1e-4)
    for k in whole.metrics:
        torch.testing.assert_close(whole.metrics[k], sum(o.metrics[k] for o in single), rtol=1e-4, atol=1e-3)


def test_chunked_equals_single_pass_with_gradients(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    student, teacher = pair
    m = method(teacher, loss="reverse", ce_weight=0.3)
    batch = m.collate(examples(4), 0)

    def loss_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        student.zero_grad()
        out = m.loss(student, batch)
        out.loss_sum.backward()
        return torch.stack([out.loss_sum.detach(), *out.metrics.values()]), student.lm_head.weight.grad.clone()

    whole = loss_and_grad()
    monkeypatch.setattr(sft_mod, "CHUNK_ELEMENTS", student.config.vocab_size * 7)  # 7 rows per chunk
    chunked = loss_and_grad()
    student.zero_grad()
    torch.testing.assert_close(whole[0], chunked[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(whole[1], chunked[1], rtol=1e-4, atol=1e-6)


def test_prompt_tuning_student_uses_full_forward(pair) -> None:
    """A student with virtual tokens (no hidden-state shortcut) against the plain teacher: same positions."""
    _, teacher = pair
    student = apply_tuning(build_preset("tiny", seed=0)[0], TuningConfig(mode="prompt", num_virtual_tokens=3)).eval()
    m = method(teacher)
    batch = m.collate(examples(3), 0)
    out = m.loss(student, batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    s = student(**inputs).logits[:, 3:][:, :-1]
    mask = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        t = teacher(**inputs).logits[:, :-1][mask]
    ref = torch.nn.functional.kl_div(s[mask].log_softmax(-1), t.log_softmax(-1), reduction="sum", log_target=True)
    torch.testing.assert_close(out.loss_sum, ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- training


def sft_train(model: torch.nn.Module, items: list[Example], steps: int, lr: float) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = default_method("sft").collate(items, 0)
    model.train()
    for _ in range(steps):
        default_method("sft").loss(model, batch).loss_sum.backward()
        opt.step()
        opt.zero_grad()


def mean_metrics(model: torch.nn.Module, m: distill.Method, items: list[Example]) -> dict[str, float]:
    with torch.no_grad():
        out = m.loss(model, m.collate(items, 0))
    n = sum(m.count(x) for x in items)
    return {k: float(v) / n for k, v in out.metrics.items()}


def test_lora_params_change_base_and_teacher_do_not() -> None:
    teacher = distill.frozen(build_preset("tiny", seed=1)[0])
    student = apply_tuning(build_preset("tiny", seed=0)[0], TuningConfig(mode="lora"))
    m = method(teacher)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    t_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # LoRA B starts at 0: the A matrices move only from the second step on
        m.loss(student, m.collate(examples(), 0)).loss_sum.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed == {n for n, p in student.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, t_before[n]) for n, p in teacher.named_parameters())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_overfitting_lowers_kl_to_a_trained_teacher() -> None:
    """A teacher trained briefly on the examples (confident, unlike a random init) and a student with other
    weights: distillation drives the student's KL to the teacher down and its agreement up."""
    torch.manual_seed(0)
    items = examples(4, seed=5)
    teacher = build_preset("tiny", seed=1)[0]
    sft_train(teacher, items, steps=60, lr=1e-2)
    teacher = distill.frozen(teacher)
    student = build_preset("tiny", seed=0)[0]
    m = method(teacher, loss="forward", temperature=1.0)
    start = mean_metrics(student, m, items)
    units = sum(m.count(x) for x in items)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    batch = m.collate(items, 0)
    student.train()
    for _ in range(60):
        (m.loss(student, batch).loss_sum / units).backward()
        opt.step()
        opt.zero_grad()
    end = mean_metrics(student, m, items)
    assert start["kl"] > 1.0, start  # the trained teacher is far from the random student
    assert end["kl"] < 0.2 * start["kl"], (start, end)
    assert end["top1_agreement"] > start["top1_agreement"] and end["top1_agreement"] > 0.8


# --------------------------------------------------------------------------- the vocabulary check


def test_vocab_check_names_both_models_and_points_to_completions() -> None:
    byte, bpe = preset_tokenizer("tiny"), preset_tokenizer("tiny-1m")
    distill.check_vocab(byte, preset_tokenizer("tiny-4m"), "tiny", "tiny-4m")  # same byte vocabulary: fine
    with pytest.raises(TunelabError) as e:
        distill.check_vocab(byte, bpe, "tiny", "tiny-1m")
    msg = str(e.value)
    assert "'tiny-1m'" in msg and "'tiny'" in msg and "method.distill.mode: completions" in msg
    assert f"{len(bpe)} tokens" in msg and f"{len(byte)} tokens" in msg


def test_vocab_check_compares_tokens_not_sizes() -> None:
    """A byte tokenizer with the ids of 'a' and 'b' exchanged: same size, still refused, the token named."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tunelab.models.presets import SPECIAL_TOKENS, _wrap

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    i, j = alphabet.index("a"), alphabet.index("b")
    alphabet[i], alphabet[j] = alphabet[j], alphabet[i]
    raw = Tokenizer(models.BPE(vocab={ch: k for k, ch in enumerate(alphabet)}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.add_special_tokens(SPECIAL_TOKENS)
    swapped, byte = _wrap(raw), preset_tokenizer("tiny")
    assert len(swapped) == len(byte)
    with pytest.raises(TunelabError, match=r"'a' is id \d+ in the student and id \d+ in the teacher"):
        distill.check_vocab(byte, swapped, "s", "t")


def test_config_requires_a_teacher() -> None:
    with pytest.raises(ValueError, match="method distill needs method.distill.teacher"):
        MethodConfig(name="distill")
    with pytest.raises(ValueError, match="needs mode: completions"):
        MethodConfig(name="distill", distill={"teacher": "m", "generation": {"base_url": "http://127.0.0.1:1/v1"}})


def test_run_directory_teacher_has_its_adapter_merged_and_is_frozen(tmp_path) -> None:
    from peft import PeftModel
    from tests.unit.serve.run_factory import make_run

    from tunelab.config import ModelConfig, RunConfig
    from tunelab.models.loader import load_run

    run = make_run(tmp_path, "lora-teacher", lora_seed=1)
    cfg = RunConfig(
        model=ModelConfig(name_or_path="tiny"), method=MethodConfig(name="distill", distill={"teacher": str(run)})
    )
    teacher = distill.load_teacher(cfg, preset_tokenizer("tiny"))
    assert not isinstance(teacher, PeftModel) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    adapter, _ = load_run(run)
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids).logits, adapter.eval()(ids).logits, rtol=1e-4, atol=1e-5)
        plain = build_preset("tiny")[0].eval()(ids).logits
    assert not torch.allclose(teacher(ids).logits, plain, atol=1e-3)  # the adapter is really in there
