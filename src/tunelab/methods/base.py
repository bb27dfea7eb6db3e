"""The method seam: what a training objective supplies to the one training loop.

A method turns a list of prepared items into a CPU batch (`collate`), says how many units that batch
normalizes by (`count`: trainable tokens for SFT, pairs for DPO, items for classification; computed
on the host from the batch, so the loop knows a step's total without a device sync), and turns a
batch on the device into a summed loss and summed metrics (`loss`). The loop divides by the step's
total count across all micro-batches and processes, so gradient accumulation equals a bigger batch.

`loss` receives the (possibly peft-wrapped) model, not the training wrapper: a method that needs a
reference model (DPO) can run `with model.disable_adapter():` for it; a distillation method can close
over a teacher. All of it runs inside `MethodModule.forward`, so DDP/FSDP see one forward call.

`evaluate` (optional) replaces `loss` when the module is in eval mode (the loop's evaluation): for a
method whose training loss says little about quality, e.g. grpo's mean reward of greedy completions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tunelab.config import RunConfig

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    loss_sum: torch.Tensor  # summed over the batch's units (not averaged)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # summed too; logged divided by count


@dataclass(frozen=True)
class Method:
    name: str
    collate: Callable[[Sequence[Any], int], Batch]  # (items, pad_id) -> CPU batch
    count: Callable[[Any], int]  # one item -> units it contributes (host-side, no tensors needed)
    loss: Callable[[nn.Module, Batch], StepOutput]
    supports_packing: bool = False
    length: Callable[[Any], int] = lambda item: len(item.input_ids)  # for length-grouped batching
    evaluate: Callable[[nn.Module, Batch], StepOutput] | None = None  # eval-mode loss; default: `loss`
    perplexity: bool = False  # loss is the mean token cross-entropy of the text, so exp(eval_loss) means something
    unit: str = "tokens"  # what `count` counts (the loss is averaged over these): logged as trained_<unit>


@dataclass(frozen=True)
class BuildContext:
    """What a method's builder may use: the run's config, the model being trained (None in tests that need no
    reference), its tokenizer, and every item the run will batch (train + eval)."""

    cfg: RunConfig
    model: nn.Module | None = None
    tokenizer: Any = None
    items: Sequence[Any] = ()
    pad_id: int = 0

    def reference(self) -> nn.Module | None:
        """A frozen copy of the model for full/freeze tuning; None for adapter modes, whose reference is the
        same model with its adapters switched off (`model.disable_adapter()`), and when there is no model."""
        from peft import PeftModel  # heavy: imported when a run builds its method, not at CLI start

        if self.model is None or isinstance(self.model, PeftModel):
            return None
        return frozen_copy(self.model)


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference for full tuning: a deep copy in eval mode with no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class MethodModule(nn.Module):
    """Model + objective as one module, so `accelerate.prepare` (DDP/FSDP/DeepSpeed) wraps the whole
    loss computation and its gradient hooks fire even though we call inner submodules directly."""

    model: Any  # a transformers or peft model (nn.Module's __getattr__ would type it Tensor | Module)

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__()
        self.model = model
        self.method = method

    # accelerate's FSDP2 preparation asks the prepared module itself for these: with cpu_ram_efficient_loading it
    # moves the module to the meta device, which unties shared weights (embeddings = LM head), and re-ties them
    # only through `tie_weights`; the embeddings also decide how it groups the outer layers into shards.
    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module | None:
        return self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None

    def get_output_embeddings(self) -> nn.Module | None:
        return self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fn = self.method.evaluate if not self.training and self.method.evaluate else self.method.loss
        out = fn(self.model, batch)
        return {"loss_sum": out.loss_sum, **out.metrics}
