"""Attention over a packed row one item at a time, for training on CPU.

Why: a packed micro-batch is one row of several items whose position ids restart per item.
Transformers' SDPA path turns that into a dense block-diagonal mask over the whole row, and the
CPU kernel then scores every query against every key of the row: with 4 items about 4x the work
of attending within each item. This function splits the row where the position ids restart and
runs causal SDPA per item, in float32 (the CPU's bf16 attention kernel was no faster per item
than over the whole masked row; the matrix products around it stay in the training precision).
Anything that is not such a row (a batch of several rows, a padding mask, a KV cache, one item)
goes to transformers' own SDPA, so the function is exact everywhere
(``tests/trainer/test_packed_attention.py`` compares outputs and gradients).

GPUs are left alone: their packed path is flash-attention's varlen kernel, not this.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "lora_packed_sdpa"


def item_bounds(position_ids: torch.Tensor) -> list[int]:
    """Offsets where items start in a packed row, and its length: [0, 70, 160, 325]."""
    row = position_ids[0]
    starts = (torch.diff(row) != 1).nonzero().flatten() + 1
    return [0, *starts.tolist(), row.numel()]


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.get("position_ids")
    plain = (position_ids is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]
             or not getattr(module, "is_causal", True) or kwargs.get("position_bias") is not None
             or kwargs.get("softcap") is not None)
    bounds = [] if plain else item_bounds(position_ids)
    if len(bounds) < 3:  # not a packed row of two or more items
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    q, k, v = query.float(), key.float(), value.float()
    parts = [
        F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], dropout_p=dropout,
                                       scale=scaling, is_causal=True, enable_gqa=gqa)
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(parts, dim=2).to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa_forward)
# The same masks as SDPA: padded batches (evaluation without packing) still get theirs.
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


@contextmanager
def per_item_attention(model: Any, use: bool) -> Iterator[bool]:
    """While the block runs, ``model`` attends per item where it ran SDPA; yields whether it does. Restored
    after, so nothing saved or loaded later names this implementation."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(base.config, "_attn_implementation", None)
    switch = use and before == "sdpa" and hasattr(base, "set_attn_implementation")
    if switch:
        base.set_attn_implementation(NAME)
    try:
        yield switch
    finally:
        if switch:
            base.set_attn_implementation(before)
