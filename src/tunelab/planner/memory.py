"""Peak training memory, term by term (bytes), for one process.

weights    base parameters x bytes of their dtype (fp32 master weights for full/freeze; adapter modes keep the
           base as configured: bf16 on a bf16 GPU, fp32 on CPU; qlora: the blocks' linear layers in 4 bits, 0.53
           bytes per parameter with nf4's block scales, the rest bf16); a full-tuning reference model
           (dpo, kto, grpo with reference auto) adds a second copy
adapters   adapter parameters (LoRA A/B, ...) in fp32, as peft keeps them
gradients  trainable parameters x 4 bytes;  optimizer  AdamW's two fp32 moments per trainable parameter
activations  what autograd keeps per token and block of a Llama-style decoder: the block input and both norm
           outputs, q/k/v, the rotated q/k, the attention output (and its contiguous copy), the residual sum, and
           gate/up/SiLU/product of the MLP: 8h + 3 kv_dim + 4 I elements (h hidden, I intermediate); eager
           attention adds the heads x seq probabilities; 2 bytes under bf16 autocast, 4 in fp32. With gradient
           checkpointing only each block's input stays, plus one block recomputed. Plus backward's working set
           (the gradients of one block's activations).
logits     tunelab's SFT projects only labelled positions, in chunks of 2^24 logits: fp32 logits, their softmax
           for the backward and its gradient of one chunk at most; other methods project every position.
           On CPU the saved activations count twice: glibc keeps the forward's freed temporaries resident
           (CPU_HEAP_RETENTION below says how this was measured).
runtime    CPU: the process's resident memory before the model loads, with the libraries a run imports (Python,
           torch, transformers, peft, accelerate, matplotlib for the report, the data), measured; GPU: the CUDA
           context and kernels (an assumed 0.6 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.methods.sft import CHUNK_ELEMENTS as CHUNK
from tunelab.planner.devices import Device
from tunelab.planner.shape import ModelShape

CUDA_CONTEXT = 0.6 * 2**30
REFERENCE_METHODS = ("dpo", "kto", "grpo")
# glibc raises its mmap threshold after the first large frees (up to 32 MB), so the forward pass's freed temporaries
# (norm products, rotations, adapter sums: about as many bytes as the saved activations) stay in the heap and in
# the resident set. Measured on tiny-4m, b=8, s=512: +948 MB after the forward with the default allocator, +398 MB
# with MALLOC_MMAP_THRESHOLD_=65536 (the saved tensors alone, as counted here). GPUs' caching allocator reuses them.
CPU_HEAP_RETENTION = 2.0


@dataclass
class Batch:
    micro_batch: int  # sequences per micro-batch (x the method's sequences per item)
    seq_len: int  # the longest sequence of a micro-batch (memory peaks on it)
    labelled: float  # fraction of positions that carry a label


def weight_bytes(cfg: RunConfig, shape: ModelShape, dev: Device) -> float:
    mode = cfg.tuning.mode
    if mode == "qlora":
        return shape.linear_params * 0.53 + (shape.base_params - shape.linear_params) * 2
    if mode in ("full", "freeze"):
        per = 4 if cfg.model.dtype in ("auto", "float32") else 2
    else:
        per = 4 if cfg.model.dtype == "float32" or (cfg.model.dtype == "auto" and not (dev.gpu and dev.bf16)) else 2
    copies = 2 if mode == "full" and cfg.method.name in REFERENCE_METHODS and _keeps_copy(cfg) else 1
    return shape.base_params * per * copies


def _keeps_copy(cfg: RunConfig) -> bool:
    return not (cfg.method.name == "dpo" and cfg.method.dpo.reference == "precompute") and not (
        cfg.method.name == "grpo" and cfg.method.grpo.kl_beta == 0
    )


def activation_bytes(cfg: RunConfig, shape: ModelShape, dev: Device, b: Batch) -> float:
    h, inter, L = shape.hidden, shape.intermediate, shape.layers
    kv_dim = h * shape.kv_heads // max(shape.heads, 1)
    per_token = 8 * h + 3 * kv_dim + 4 * inter
    if cfg.model.attn_implementation == "eager":
        per_token += 2 * shape.heads * b.seq_len
    size = 2 if dev.gpu and cfg.train.precision in ("auto", "bf16", "fp16") else 4
    tokens = b.micro_batch * b.seq_len
    layers = shape.trainable_layers if cfg.tuning.mode == "freeze" else L  # no backward below: nothing saved there
    ckpt = cfg.train.gradient_checkpointing
    kept = tokens * (L * h + per_token) if ckpt else tokens * (layers * per_token + 2 * h)
    working = tokens * (2 * h + 2 * inter)  # one block's activation gradients during backward
    retained = CPU_HEAP_RETENTION if not dev.gpu else 1.0
    return (kept * retained + working) * size


def logit_bytes(cfg: RunConfig, shape: ModelShape, b: Batch) -> float:
    positions = b.micro_batch * b.seq_len * (b.labelled if cfg.method.name == "sft" else 1.0)
    elements = positions * shape.vocab
    if cfg.method.name == "sft":
        elements = min(elements, CHUNK)
    return 3 * elements * 4


def memory_terms(cfg: RunConfig, shape: ModelShape, dev: Device, b: Batch, runtime: float) -> dict[str, float]:
    """Each term of the peak, in bytes (their sum is the estimate)."""
    adapters = max(shape.params - shape.base_params, 0)
    return {
        "runtime": runtime if not dev.gpu else CUDA_CONTEXT,
        "weights": weight_bytes(cfg, shape, dev),
        "adapters": adapters * 4.0,
        "gradients": shape.trainable * 4.0,
        "optimizer": shape.trainable * 8.0,
        "activations": activation_bytes(cfg, shape, dev, b),
        "logits": logit_bytes(cfg, shape, b),
    }
