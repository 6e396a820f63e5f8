"""Reference attention over the paged cache in plain PyTorch (the CPU path and the oracle).

Each sequence gathers its context from the cache by slot index and runs one
``scaled_dot_product_attention`` call; the causal mask is offset by the cached prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention.base import AttentionBackend, AttentionBatch


class TorchAttention(AttentionBackend):
    name = "torch"

    def plan(self, batch: AttentionBatch) -> None:
        page_size = self.kv_cache.page_size
        device = self.kv_cache.device
        self._slot_mapping = batch.slot_mapping
        self._seqs: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] = []
        offsets = torch.arange(page_size)
        q_start = 0
        for q_len, kv_len, pages in zip(batch.q_lens, batch.kv_lens, batch.page_table):
            num_pages = -(-kv_len // page_size)
            assert len(pages) >= num_pages, "page table shorter than the context"
            page_ids = torch.tensor(pages[:num_pages], dtype=torch.int64)
            ctx_slots = (page_ids[:, None] * page_size + offsets[None, :]).flatten()[:kv_len]
            mask = None
            if 1 < q_len < kv_len:  # a chunk after a cached prefix: causal with an offset
                q_pos = torch.arange(kv_len - q_len, kv_len)
                mask = (torch.arange(kv_len)[None, :] <= q_pos[:, None]).to(device)
            self._seqs.append((q_start, q_len, ctx_slots.to(device), mask))
            q_start += q_len

    def forward(
        self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        cache = self.kv_cache
        cache.store(layer_id, self._slot_mapping, k, v)
        k_slots, v_slots = cache.k_slots(layer_id), cache.v_slots(layer_id)
        out = torch.empty_like(q)
        for q_start, q_len, ctx_slots, mask in self._seqs:
            kv_len = ctx_slots.numel()
            # (1, heads, len, head_dim) views for SDPA; KV heads are shared by query groups.
            q_i = q[q_start : q_start + q_len].transpose(0, 1).unsqueeze(0)
            k_i = k_slots.index_select(0, ctx_slots).to(q.dtype).transpose(0, 1).unsqueeze(0)
            v_i = v_slots.index_select(0, ctx_slots).to(q.dtype).transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(
                q_i,
                k_i,
                v_i,
                attn_mask=mask,
                is_causal=mask is None and q_len == kv_len and q_len > 1,
                scale=self.scale,
                enable_gqa=True,
            )
            out[q_start : q_start + q_len] = o.squeeze(0).transpose(0, 1)
        return out
