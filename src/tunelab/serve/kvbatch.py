"""The running batch's KV cache: one left-padded `DynamicCache` whose rows join and leave at any step.

transformers' `DynamicCache` keeps, per layer, keys and values of shape [batch, kv_heads, seq, head_dim].
A row that joins is prefilled with the other newcomers of its step (left-padded among themselves), then
the two caches are merged along the batch axis after left-padding the shorter one on the sequence axis;
the attention mask marks padding per row and each row carries its own next position id, so a row's
attention and RoPE positions are exactly what they would be alone (up to float noise from padding). A row
that leaves is dropped with an index select, and sequence columns that became padding for every remaining
row are cut off, so the cache shrinks back when long rows finish.

Why this and not transformers' paged `ContinuousBatchingManager`: that path needs a paged attention kernel
(`sdpa_paged`/`flash_paged`) and a block table per model family; the padded cache works with every model
that takes `attention_mask` + `position_ids` + `past_key_values` (all decoder LMs in transformers) and with
peft's mixed-adapter batches. The cost is padding: a short row that joins a batch of long ones attends over
their length too (masked). Join and leave copy the cache (O(cache)) once per event, never per step.
Assumes full-attention layers (`DynamicLayer`); sliding-window layers are not merged here.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowLayer(DynamicLayer):
    """A DynamicLayer that appends into spare capacity: O(new tokens) per step instead of DynamicLayer's
    torch.cat, which copies the whole cache every step (at 32 rows x 2k tokens that copy was most of a step).
    Capacity grows by 1.5x; a join or leave replaces `keys` (see Lane), and the next update adopts it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        keys: Any = self.keys  # typed Optional upstream; set by lazy_initialization above
        used = keys.shape[-2] if keys.dim() == 4 else 0
        if not self._adopted() or used + n > self._kbuf.shape[-2]:  # type: ignore[union-attr]
            self._kbuf = _grow(keys, key_states, used, used + n)
            self._vbuf = _grow(self.values, value_states, used, used + n)  # type: ignore[arg-type]
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[:, :, used : used + n] = key_states
        self._vbuf[:, :, used : used + n] = value_states
        self.keys, self.values = self._kbuf[:, :, : used + n], self._vbuf[:, :, : used + n]
        return self.keys, self.values

    def _adopted(self) -> bool:
        b, keys = self._kbuf, self.keys
        return b is not None and keys is not None and keys.dim() == 4 and keys.data_ptr() == b.data_ptr() and (
            keys.shape[:2] == b.shape[:2])  # fmt: skip


def _grow(old: torch.Tensor, new: torch.Tensor, used: int, need: int) -> torch.Tensor:
    shape = list(new.shape)
    shape[-2] = max(64, need + need // 2)
    buf = new.new_empty(shape)
    if used:
        buf[:, :, :used] = old
    return buf


def new_cache() -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowLayer  # layers are created on the first update
    return cache


class Lane:
    """Rows in decoding: KV cache, attention mask [B, L], next position [B] and last token [B] per row."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.pos = torch.zeros(0, dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def add(self, other: Lane) -> None:
        """Append `other`'s rows (after this lane's rows)."""
        if len(self) == 0:
            self.cache, self.mask, self.pos, self.last = other.cache, other.mask, other.pos, other.last
            return
        width = max(self.width, other.width)
        assert self.cache is not None and other.cache is not None
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)])
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)])
        self.mask = torch.cat([_pad(self.mask, width), _pad(other.mask, width)])
        self.pos = torch.cat([self.pos, other.pos])
        self.last = torch.cat([self.last, other.last])

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in this order), then drop columns that are padding for all of them."""
        if len(indices) == len(self) and indices == list(range(len(self))):
            return
        if not indices:
            self.__init__()  # type: ignore[misc]
            return
        idx = torch.tensor(indices, dtype=torch.long)
        self.mask, self.pos, self.last = self.mask[idx], self.pos[idx], self.last[idx]
        cut = int((self.mask.sum(0) > 0).nonzero()[0]) if bool(self.mask.any()) else 0
        self.mask = self.mask[:, cut:]
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = layer.keys[idx, :, cut:]
            layer.values = layer.values[idx, :, cut:]

    def step(self, model: Any, extra: dict[str, Any]) -> torch.Tensor:
        """One decode step for every row (their `last` tokens) -> next-token logits [B, V]."""
        self.mask = torch.cat([self.mask, torch.ones((len(self), 1), dtype=self.mask.dtype)], dim=1)
        # The 4D mask [B, 1, 1, L] (True: attend) is what transformers would build from the 2D one for a single
        # query position; given ready-made, its mask-building code (a fair part of a small model's step) is skipped.
        out = model(
            input_ids=self.last[:, None],
            attention_mask=self.mask.bool()[:, None, None, :],
            position_ids=self.pos[:, None],
            use_cache=True,
            **{cache_kw(model): self.cache},
            **extra,
        )
        self.pos = self.pos + 1
        return out.logits[:, -1]


def prefill(
    model: Any, prompts: list[list[int]], pad_id: int, extra: dict[str, Any], all_logits: bool = False
) -> tuple[Lane, torch.Tensor]:
    """Run the prompts (left-padded together) -> a Lane holding their cache, and logits: [B, V] for the next
    token, or [B, L, V] for every position when `all_logits` (prompt logprobs)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every row's next token lands in the last column
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    lane = Lane()
    lane.cache, lane.mask = new_cache(), mask
    kwargs = {} if all_logits else {"logits_to_keep": 1}
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
        **{cache_kw(model): lane.cache}, **kwargs, **extra,
    )  # fmt: skip
    lane.pos = mask.sum(-1)
    lane.last = torch.zeros(len(prompts), dtype=torch.long)
    return lane, (out.logits if all_logits else out.logits[:, -1])


def repeat_rows(lane: Lane, counts: list[int]) -> Lane:
    """Row i repeated counts[i] times (the n choices of a request share one prefill)."""
    if all(c == 1 for c in counts):
        return lane
    idx = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long)
    out = Lane()
    out.mask, out.pos, out.last = lane.mask[idx], lane.pos[idx], lane.last[idx]
    out.cache = lane.cache
    assert out.cache is not None
    for layer in _layers(out.cache):
        layer.keys, layer.values = layer.keys[idx], layer.values[idx]
    return out


def _layers(cache: DynamicCache) -> list[Any]:
    return list(cache.layers)


def cache_kw(model: Any) -> str:
    """The forward argument that takes the KV cache: `cache` since transformers 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kw = _CACHE_KW.get(type(base))
    if kw is None:
        kw = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
        _CACHE_KW[type(base)] = kw
    return kw


_CACHE_KW: dict[type, str] = {}


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (dim 2 of a cache tensor, dim 1 of a mask) with zeros up to `width`."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
