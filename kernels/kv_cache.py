"""Paged KV memory: one key and one value tensor per layer, addressed by page or by slot.

Layout per layer: ``(num_pages, page_size, num_kv_heads, head_dim)`` (FlashInfer's NHD paged
layout), so ``slot = page * page_size + offset`` indexes the flattened first two dims. Sequences
own pages, not tensors: accepting speculated tokens or sharing a prefix only moves page ids, and
tensor parallelism shards ``num_kv_heads`` per rank.
"""

from __future__ import annotations

import torch


class KVCache:
    """Owns the KV tensors of every layer on one device (one rank)."""

    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        assert num_pages > 0 and page_size > 0, "empty KV cache"
        self.num_layers = num_layers
        self.num_pages = num_pages
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.k_pages = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_pages = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # Slots copied by copy_slots since creation (all layers count once). Only partial-page
        # prefix reuse copies; speculative decoding must leave this unchanged.
        self.num_copied_slots = 0

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    @property
    def bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def k_slots(self, layer_id: int) -> torch.Tensor:  # (num_slots, num_kv_heads, head_dim)
        return self.k_pages[layer_id].view(self.num_slots, self.num_kv_heads, self.head_dim)

    def v_slots(self, layer_id: int) -> torch.Tensor:  # (num_slots, num_kv_heads, head_dim)
        return self.v_pages[layer_id].view(self.num_slots, self.num_kv_heads, self.head_dim)

    def store(
        self,
        layer_id: int,
        slot_mapping: torch.Tensor,  # (num_tokens,) int64
        k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
        v: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    ) -> None:
        self.k_slots(layer_id).index_copy_(0, slot_mapping, k.to(self.dtype))
        self.v_slots(layer_id).index_copy_(0, slot_mapping, v.to(self.dtype))

    def copy_slots(self, src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
        """Copy KV of ``src_slots`` to ``dst_slots`` in every layer (partial-page reuse)."""
        assert src_slots.shape == dst_slots.shape, "copy_slots needs equal lengths"
        self.num_copied_slots += src_slots.shape[0]
        for layer_id in range(self.num_layers):
            for slots in (self.k_slots(layer_id), self.v_slots(layer_id)):
                slots.index_copy_(0, dst_slots, slots.index_select(0, src_slots))

    def read_pages(self, page_ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Gather whole pages of every layer (for demotion to a host tier)."""
        return (
            [k.index_select(0, page_ids) for k in self.k_pages],
            [v.index_select(0, page_ids) for v in self.v_pages],
        )

    def write_pages(
        self, page_ids: torch.Tensor, k: list[torch.Tensor], v: list[torch.Tensor]
    ) -> None:
        """Scatter whole pages back (prefetch from a host tier)."""
        for layer_id in range(self.num_layers):
            self.k_pages[layer_id].index_copy_(0, page_ids, k[layer_id].to(self.device))
            self.v_pages[layer_id].index_copy_(0, page_ids, v[layer_id].to(self.device))
