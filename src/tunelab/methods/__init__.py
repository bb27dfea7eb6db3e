"""Training objectives. Add one: a module that builds a `Method`, one line here, an example config,
tests (loss against a hand computation, trainable params change, overfits), a doc page."""

from __future__ import annotations

from tunelab.methods.base import Method, MethodModule, StepOutput
from tunelab.methods.sft import SFT

METHODS: dict[str, Method] = {"sft": SFT}

__all__ = ["METHODS", "Method", "MethodModule", "StepOutput"]
