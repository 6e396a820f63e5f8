"""FlashInfer paged attention: the fast path on NVIDIA GPUs.

``plan`` turns the page table into FlashInfer's CSR form (``kv_indptr`` (num_seqs + 1,),
``kv_indices`` (total_pages,), ``kv_last_page_len`` (num_seqs,), all int32 on the host) and plans
one wrapper: ``BatchDecodeWithPagedKVCacheWrapper`` when every sequence brings one token, else
``BatchPrefillWithPagedKVCacheWrapper`` with a causal mask for all rows (FlashInfer aligns each
sequence's queries to the end of its context, so decode rows in a mixed batch are exact too).
``forward`` stores k/v with the fused Triton store kernel and runs the planned wrapper on that
layer's cache.

A wrapper's ``plan`` writes its schedule into one page-locked host buffer and queues an
asynchronous copy of it to the device, without waiting. When the host runs ahead of the device
(chunked prefill steps that sample nothing never synchronise; overlap scheduling queues a step
behind the running one), the next ``plan`` would overwrite that buffer before the previous
step's copy has read it, and the previous step would run with the next one's schedule: out of
bounds on long prefills (an illegal memory access). So ``plan`` first waits for the last
plan's copy to have run, which keeps the host at most one queued step ahead.

FlashInfer is imported on first use; its kernels compile on first use per (dtype, head_dim)
and are cached under ``$FLASHINFER_WORKSPACE_BASE``.
"""

from __future__ import annotations

import importlib.util

import torch

from kernels.attention.base import AttentionBackend, AttentionBatch
from kernels.kv_cache import KVCache
from kernels.ops.kv_store import kv_store_triton

_WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended split-KV scratch size


class FlashInferAttention(AttentionBackend):
    name = "flashinfer"

    def __init__(
        self,
        kv_cache: KVCache,
        num_q_heads: int,
        scale: float,
        decode_tensor_cores: bool = False,
    ) -> None:
        super().__init__(kv_cache, num_q_heads, scale)
        assert kv_cache.device.type == "cuda", "FlashInfer needs a CUDA KV cache"
        import flashinfer

        # One float workspace serves both wrappers: a batch runs only the one it planned.
        self._workspace = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=kv_cache.device)
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace, kv_layout="NHD", use_tensor_cores=decode_tensor_cores
        )
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            self._workspace, kv_layout="NHD"
        )
        self._wrapper = self._decode
        self._planned = torch.cuda.Event()  # recorded after each plan's host->device copy

    @staticmethod
    def available() -> bool:
        return torch.cuda.is_available() and importlib.util.find_spec("flashinfer") is not None

    def plan(self, batch: AttentionBatch) -> None:
        cache = self.kv_cache
        page_size = cache.page_size
        kv_indptr, kv_indices, last_page_lens = [0], [], []
        qo_indptr = [0]
        for q_len, kv_len, pages in zip(batch.q_lens, batch.kv_lens, batch.page_table):
            assert 0 < q_len <= kv_len, "each sequence needs new tokens within its context"
            num_pages = -(-kv_len // page_size)
            assert len(pages) >= num_pages, "page table shorter than the context"
            kv_indices.extend(pages[:num_pages])
            kv_indptr.append(kv_indptr[-1] + num_pages)
            last_page_lens.append(kv_len - (num_pages - 1) * page_size)
            qo_indptr.append(qo_indptr[-1] + q_len)

        def i32(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32)

        self._slot_mapping = batch.slot_mapping
        self._num_tokens = batch.num_tokens
        if batch.num_seqs == 0:
            return
        common = dict(sm_scale=self.scale, q_data_type=cache.dtype, kv_data_type=cache.dtype)
        heads = (self.num_q_heads, cache.num_kv_heads, cache.head_dim, page_size)
        self._planned.synchronize()  # the host buffers are free again (no-op before a record)
        if all(q_len == 1 for q_len in batch.q_lens):
            self._wrapper = self._decode
            self._decode.plan(
                i32(kv_indptr), i32(kv_indices), i32(last_page_lens), *heads, **common
            )
        else:
            self._wrapper = self._prefill
            self._prefill.plan(
                i32(qo_indptr), i32(kv_indptr), i32(kv_indices), i32(last_page_lens), *heads,
                causal=True, **common,
            )
        self._planned.record()

    def forward(
        self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        cache = self.kv_cache
        k_cache, v_cache = cache.k_pages[layer_id], cache.v_pages[layer_id]
        kv_store_triton(k_cache, v_cache, self._slot_mapping, k, v)
        assert q.dtype == cache.dtype, "FlashInfer was planned for queries in the cache dtype"
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if self._num_tokens == 0:
            return out
        # The kernels take (num_tokens, num_heads, head_dim) with dense rows: copy strided views.
        q = q if q.is_contiguous() else q.contiguous()
        return self._wrapper.run(q, (k_cache, v_cache), out=out)
