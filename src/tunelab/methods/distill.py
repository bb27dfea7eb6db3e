"""Knowledge distillation from a teacher's token distributions (method.distill.mode: logits).

At every labelled position (the reply tokens SFT would train on; units = trainable tokens) the student's
next-token distribution is pulled toward the teacher's, both softened by temperature T:
  forward  KL(p_t || p_s) = sum p_t (log p_t - log p_s)   mass-covering (Hinton et al. 2015)
  reverse  KL(p_s || p_t) = sum p_s (log p_s - log p_t)   mode-seeking (MiniLLM, Gu et al. 2023)
  mix      w forward + (1 - w) reverse                     (w = distill.mix)
loss = T^2 KL + ce_weight * CE(student, data labels). T^2 keeps the gradient scale of the soft term
roughly independent of T. Logged per token: `kl` (the configured divergence at T), `ce` (the student's
hard-label cross-entropy at T = 1, also when its weight is 0) and `top1_agreement` (student argmax ==
teacher argmax).

The teacher is loaded once, frozen, in eval mode; it is closed over by the loss, not a submodule of the
trained module, so accelerate's wrappers (DDP/FSDP) never see it and it is never saved; it is moved to
the batch's device on first use and replicated, not sharded, on every process. It sees exactly the
student's batch (packed rows included, with use_cache=False so packed-sequence masking applies) and,
like SFT, only the hidden states of labelled positions go through its output head, in chunks. The
student's chunks run under activation checkpointing; the teacher's logits of a chunk are recomputed in
backward rather than kept.

Both models must share the vocabulary (compared token by token, not by size); heads padded to different
widths are cut to the narrower one (the padding rows are not tokens). Models with different tokenizers
use mode: completions (tunelab.methods.teacher_data).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.config import DistillConfig, ModelConfig, RunConfig
from tunelab.errors import TunelabError
from tunelab.methods import sft
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.sft import IGNORE, _fast_parts
from tunelab.models.load import load_tokenizer, resolve_dtype
from tunelab.models.loader import load, resolve

METRICS = ("kl", "ce", "top1_agreement")


@dataclass(frozen=True)
class KD:
    kind: str = "forward"  # forward | reverse | mix
    mix: float = 0.5  # weight of forward KL in mix
    temperature: float = 1.0
    ce_weight: float = 0.0


def kd_sums(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, kd: KD) -> torch.Tensor:
    """[loss, kl, ce, agreement] summed over rows of (rows x vocab) logits; only the loss carries a gradient."""
    weights = {"forward": (1.0, 0.0), "reverse": (0.0, 1.0), "mix": (kd.mix, 1 - kd.mix)}
    if kd.kind not in weights:
        raise ValueError(f"distill.loss: expected forward, reverse or mix, got {kd.kind!r}")
    w_fwd, w_rev = weights[kd.kind]
    s, t = student.float(), teacher.float().detach()
    log_s = F.log_softmax(s / kd.temperature, -1)
    log_t = F.log_softmax(t / kd.temperature, -1)
    kl = s.new_zeros(())  # F.kl_div(input, target, log_target=True) = sum exp(target) (target - input)
    if w_fwd:
        kl = kl + w_fwd * F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    if w_rev:
        kl = kl + w_rev * F.kl_div(log_t, log_s, reduction="sum", log_target=True)
    ce = F.cross_entropy(s if kd.ce_weight else s.detach(), targets, reduction="sum")
    loss = kd.temperature**2 * kl + kd.ce_weight * ce
    agree = (s.argmax(-1) == t.argmax(-1)).sum().float()
    return torch.stack([loss, kl.detach(), ce.detach(), agree])


def _rows(model: nn.Module, inputs: Batch, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, nn.Module | None]:
    """(hidden states, head) of the positions in `mask`, or (their logits, None) where the model must run whole."""
    parts = _fast_parts(model)
    if parts is None:
        logits = model(**inputs, use_cache=False).logits[:, -length:]  # drop virtual tokens (prompt learning)
        return logits[:, :-1][mask], None
    decoder, head = parts
    return decoder(**inputs, use_cache=False).last_hidden_state[:, :-1][mask], head


def _project(rows: torch.Tensor, head: nn.Module | None, vocab: int) -> torch.Tensor:
    return (rows if head is None else head(rows))[:, :vocab]


def _chunk(s_rows: torch.Tensor, s_head: nn.Module | None, t_rows: torch.Tensor, t_head: nn.Module | None,
           targets: torch.Tensor, kd: KD, vocab: int) -> torch.Tensor:  # fmt: skip
    with torch.no_grad():
        teacher = _project(t_rows, t_head, vocab)
    return kd_sums(_project(s_rows, s_head, vocab), teacher, targets, kd)


def _width(rows: torch.Tensor, head: nn.Module | None) -> int:
    return rows.shape[-1] if head is None else int(head.out_features)  # type: ignore[arg-type]


def _on_device(teacher: nn.Module, device: torch.device) -> None:
    if next(teacher.parameters()).device != device:  # accelerate moves the student only
        teacher.to(device)


def loss(model: nn.Module, batch: Batch, teacher: nn.Module, kd: KD) -> StepOutput:
    labels = batch["labels"]
    mask = labels[:, 1:] != IGNORE
    targets = labels[:, 1:][mask]
    inputs: Batch = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    _on_device(teacher, labels.device)
    with torch.no_grad():
        t_rows, t_head = _rows(teacher, inputs, mask, labels.shape[1])
    s_rows, s_head = _rows(model, inputs, mask, labels.shape[1])
    vocab = min(_width(s_rows, s_head), _width(t_rows, t_head))
    size = max(1, sft.CHUNK_ELEMENTS // vocab)
    if s_rows.shape[0] <= size:
        sums = _chunk(s_rows, s_head, t_rows, t_head, targets, kd, vocab)
    else:
        parts = [slice(i, i + size) for i in range(0, s_rows.shape[0], size)]
        sums = sum(
            checkpoint(_chunk, s_rows[c], s_head, t_rows[c], t_head, targets[c], kd, vocab, use_reentrant=False)
            for c in parts
        )
    return StepOutput(sums[0], dict(zip(METRICS, sums[1:])))


# --------------------------------------------------------------------------- the teacher


def teacher_model(name: str, student: ModelConfig) -> tuple[Any, Any]:
    """(model, tokenizer) of a teacher: a tunelab run directory (adapters merged in), a preset, a folder or a
    hub id, loaded with the student's dtype and attention settings (remote code stays off)."""
    like = ModelConfig(dtype=student.dtype, attn_implementation=student.attn_implementation)
    with _as_teacher():
        model, tok = load(name, like=like, dtype=resolve_dtype(student.dtype), merge=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


@contextmanager
def _as_teacher() -> Iterator[None]:
    """Loading errors name the config key the teacher came from, not model.name_or_path."""
    try:
        yield
    except TunelabError as e:
        raise TunelabError("method.distill.teacher: " + str(e).removeprefix("model.name_or_path: ")) from None


def teacher_tokenizer(name: str) -> Any:
    """The teacher's tokenizer alone (cheap): to check the vocabulary before loading anything big."""
    with _as_teacher():
        return load_tokenizer(resolve(name).tokenizer)


def check_vocab(student_tok: Any, teacher_tok: Any, student: str, teacher: str) -> None:
    """Logit distillation compares distributions over token ids: both vocabularies must be identical."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s == t:
        return
    token = next((k for k in sorted(s, key=s.__getitem__) if t.get(k) != s[k]), None)
    if token is None:
        token = next(k for k in t if k not in s)
        example = f"{token!r} is id {t[token]} in the teacher and not in the student's vocabulary"
    elif token in t:
        example = f"{token!r} is id {s[token]} in the student and id {t[token]} in the teacher"
    else:
        example = f"{token!r} is id {s[token]} in the student and not in the teacher's vocabulary"
    raise TunelabError(
        f"method.distill.teacher: the teacher {teacher!r} ({len(t)} tokens) and the student {student!r} ({len(s)} tokens) "
        f"have different tokenizers ({example}); logit distillation needs the same vocabulary. Use "
        "method.distill.mode: completions to train the student on the teacher's generated replies instead."
    )


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(cfg: RunConfig, tokenizer: Any) -> nn.Module:
    """The frozen teacher for logit distillation, after checking its vocabulary against the student's."""
    name = str(cfg.method.distill.teacher)
    model, tok = teacher_model(name, cfg.model)
    check_vocab(tokenizer, tok, cfg.model.name_or_path, name)
    return frozen(model)


def build(ctx: BuildContext) -> Method:
    """Logits mode: the KD loss against the teacher, loaded now and its vocabulary checked against the
    student's tokenizer. Completions mode trains plain SFT on the teacher's replies (written before training;
    see tunelab.methods.teacher_data)."""
    d = ctx.cfg.method.distill
    if d.mode == "completions":
        return sft.SFT
    return kd_method(d, load_teacher(ctx.cfg, ctx.tokenizer or load_tokenizer(ctx.cfg.model)))


def kd_method(d: DistillConfig, teacher: nn.Module) -> Method:
    kd = KD(d.loss, d.mix, d.temperature, d.ce_weight)
    fn = partial(loss, teacher=teacher, kd=kd)
    return Method("distill", collate=sft.collate, count=sft.count, loss=fn, supports_packing=True)
