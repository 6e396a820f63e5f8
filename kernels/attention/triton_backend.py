"""Triton paged attention: the portable GPU backend (and, interpreted, testable on CPU).

``plan`` packs the batch's index tensors into one int32 host tensor and copies it to the device
once (``cu_q_lens``, ``kv_lens``, the decode and extend sequence ids, a zero-padded page table,
each 16-byte aligned, the table 16 pages wide or a multiple: see ``pack_aligned``),
then picks the decode KV split. ``forward`` stores k/v with the fused store kernel and launches
at most three kernels: split-KV decode over the ``q_len == 1`` rows (plus the merge of its
splits) and causal extend over the rest. No host synchronisation happens in ``forward``.
"""

from __future__ import annotations

import torch

from kernels._triton import interpreting, next_pow2, pack_aligned, triton
from kernels.attention import triton_kernels as tk
from kernels.attention.base import AttentionBackend, AttentionBatch
from kernels.kv_cache import KVCache
from kernels.ops.kv_store import kv_store_triton

_MAX_SPLITS = 64


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def decode_splits(rows: int, num_kv_heads: int, num_sms: int, max_splits: int = _MAX_SPLITS
                  ) -> int:
    """KV splits a decode row gets: about four programs per SM when every row is long (the best
    or within 2% of it at every long-context shape benchmarks/decode_kernels.py measured on an
    H200; two per SM was 5-25% slower from 8K tokens a row). A split past a row's context costs
    one empty program."""
    return max(1, min(max_splits, 4 * num_sms // (rows * num_kv_heads)))


class TritonAttention(AttentionBackend):
    name = "triton"

    def __init__(self, kv_cache: KVCache, num_q_heads: int, scale: float) -> None:
        super().__init__(kv_cache, num_q_heads, scale)
        assert num_q_heads % kv_cache.num_kv_heads == 0, "query heads must group over KV heads"
        self.group = num_q_heads // kv_cache.num_kv_heads
        self.block_d = next_pow2(kv_cache.head_dim)
        device = kv_cache.device
        if device.type == "cuda" and not interpreting():
            self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
            self.block_m, self.block_n, self.decode_block_n = 64, 64, 64
            self.num_warps, self.num_stages = 4, 2
            # Shorter KV splits cost more in merging than they win in parallelism.
            self.min_split_len = 256
        else:  # the interpreter runs on numpy: small tiles keep CPU tests fast
            self.num_sms = 4
            self.block_m, self.block_n, self.decode_block_n = 16, 16, 16
            self.num_warps, self.num_stages = 1, 1
            self.min_split_len = 32
        # tl.dot needs M >= 16 on GPUs; padded query heads are masked off.
        self.block_h = max(16, next_pow2(self.group))

    @staticmethod
    def available() -> bool:
        return triton is not None and torch.cuda.is_available()

    def plan(self, batch: AttentionBatch) -> None:
        page_size = self.kv_cache.page_size
        num_seqs = batch.num_seqs
        page_counts = [_cdiv(kv_len, page_size) for kv_len in batch.kv_lens]
        # The table's row stride is a kernel argument: a multiple of 16 always, so Triton's
        # divisibility specialisation never compiles a new variant mid-serve (a ~1 s stall).
        max_pages = _cdiv(max(page_counts, default=1) or 1, 16) * 16
        cu_q_lens = [0]
        for q_len, kv_len in zip(batch.q_lens, batch.kv_lens):
            assert 0 < q_len <= kv_len, "each sequence needs new tokens within its context"
            cu_q_lens.append(cu_q_lens[-1] + q_len)
        decode_ids = [i for i, q_len in enumerate(batch.q_lens) if q_len == 1]
        extend_ids = [i for i, q_len in enumerate(batch.q_lens) if q_len > 1]
        table: list[int] = []
        for pages, count in zip(batch.page_table, page_counts):
            assert len(pages) >= count, "page table shorter than the context"
            table.extend(pages[:count])
            table.extend([0] * (max_pages - count))
        parts = pack_aligned([cu_q_lens, list(batch.kv_lens), decode_ids, extend_ids, table],
                             torch.int32, self.kv_cache.device)
        self._cu_q_lens, self._kv_lens, self._decode_ids, self._extend_ids = parts[:4]
        self._page_table = parts[4].view(num_seqs, max_pages)
        self._slot_mapping = batch.slot_mapping
        self._num_decode = len(decode_ids)
        self._num_extend = len(extend_ids)
        self._max_extend_q = max((batch.q_lens[i] for i in extend_ids), default=0)
        self._plan_decode_split(max((batch.kv_lens[i] for i in decode_ids), default=0))

    def _plan_decode_split(self, max_kv_len: int) -> None:
        """Split long contexts by ``decode_splits``, no split shorter than ``min_split_len``."""
        self._num_splits, self._split_len = 1, max(max_kv_len, 1)
        self._mid_o = self._mid_lse = None
        if self._num_decode == 0:
            return
        splits = min(decode_splits(self._num_decode, self.kv_cache.num_kv_heads, self.num_sms),
                     _cdiv(max_kv_len, self.min_split_len))
        if splits <= 1:
            return
        block = self.decode_block_n
        self._split_len = _cdiv(_cdiv(max_kv_len, splits), block) * block
        self._num_splits = _cdiv(max_kv_len, self._split_len)
        if self._num_splits > 1:
            shape = (self._num_decode, self.num_q_heads, self._num_splits)
            device = self.kv_cache.device
            self._mid_o = torch.empty(
                (*shape, self.kv_cache.head_dim), dtype=torch.float32, device=device
            )
            self._mid_lse = torch.empty(shape, dtype=torch.float32, device=device)

    def forward(
        self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        cache = self.kv_cache
        k_cache, v_cache = cache.k_pages[layer_id], cache.v_pages[layer_id]
        kv_store_triton(k_cache, v_cache, self._slot_mapping, k, v)
        assert q.stride(2) == 1, "attention needs contiguous head_dim"
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        sm_scale_log2 = self.scale * 1.4426950408889634
        head_dim, num_kv_heads = cache.head_dim, cache.num_kv_heads
        common = (
            self._cu_q_lens, self._kv_lens, self._page_table, sm_scale_log2,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), self._page_table.stride(0),
        )
        if self._num_decode:
            splits = self._num_splits
            mid_o = self._mid_o if splits > 1 else out
            mid_lse = self._mid_lse if splits > 1 else out
            tk.decode_kernel[(self._num_decode, num_kv_heads, splits)](
                q, k_cache, v_cache, out, mid_o, mid_lse, self._decode_ids, *common,
                self.num_q_heads, num_kv_heads, head_dim, self.group, self._split_len, splits,
                self._kv_lens, self._kv_lens,  # unread: CSR is off
                PAGE_SIZE=cache.page_size, SPLIT=splits > 1,
                BLOCK_H=self.block_h, BLOCK_N=self.decode_block_n, BLOCK_D=self.block_d,
                num_warps=self.num_warps, num_stages=self.num_stages,
            )
            if splits > 1:
                tk.merge_kernel[(self._num_decode, self.num_q_heads)](
                    out, mid_o, mid_lse, self._decode_ids, self._cu_q_lens, self._kv_lens,
                    self._kv_lens, self._kv_lens,  # unread: CSR is off
                    out.stride(0), out.stride(1), self._page_table.stride(0),
                    self.num_q_heads, head_dim, self._split_len, splits,
                    PAGE_SIZE=cache.page_size, BLOCK_N=self.decode_block_n,
                    # One variant for every split count (a count-sized block would build a
                    # new kernel mid-serve the first time a longer context splits further).
                    BLOCK_S=next_pow2(_MAX_SPLITS), BLOCK_D=self.block_d,
                    num_warps=self.num_warps,
                )
        if self._num_extend:
            grid = (self._num_extend, self.num_q_heads, _cdiv(self._max_extend_q, self.block_m))
            tk.extend_kernel[grid](
                q, k_cache, v_cache, out, self._extend_ids, *common,
                num_kv_heads, head_dim, self.group, PAGE_SIZE=cache.page_size,
                BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_D=self.block_d,
                num_warps=self.num_warps, num_stages=self.num_stages,
            )
        return out
