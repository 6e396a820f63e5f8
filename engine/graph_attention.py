"""The attention a decode CUDA graph captures: fixed buffers, planned outside the graph.

A decode graph of bucket ``B`` replays the same kernel launches every step, so attention must
read everything that changes (page ids, context lengths) from device buffers that the bucket
refills before each replay. Both kinds read the bucket's paged CSR layout (``kv_indptr``
(B + 1,), ``kv_indices``, ``kv_last_page_len`` (B,)):

- ``flashinfer``: FlashInfer's CUDA-graph decode wrapper; its ``plan`` (host work, pinned
  asynchronous copies) runs before each replay.
- ``triton``: our split-KV decode kernel in CSR mode with per-row split lengths, launched with a
  fixed grid (B x KV heads x ``num_splits``) plus the merge of the splits; no plan at all.
  (Merging in the decode kernel, by the last split to finish, measured 4x slower at batch 1.)
"""

from __future__ import annotations

import os

import torch

from kernels._triton import next_pow2, pdl_args
from kernels.attention import AttentionBackend, AttentionBatch
from kernels.attention import triton_kernels as tk
from kernels.attention.triton_backend import decode_splits
from kernels.kv_cache import KVCache
from kernels.ops.kv_store import kv_store_triton

GRAPH_ATTENTION_KINDS = ("flashinfer", "triton")


class GraphAttention(AttentionBackend):
    """Decode attention of one bucket over persistent buffers.

    ``slot_mapping`` (B,) int64 and, for the Triton kind, ``kv_indptr`` (B + 1,) and
    ``kv_last_page_len`` (B,) are device views the bucket fills; ``plan_step`` receives the
    same layout as pinned host int32 tensors plus the page ids already on the device."""

    def __init__(self, kv_cache: KVCache, num_q_heads: int, scale: float,
                 slot_mapping: torch.Tensor) -> None:
        super().__init__(kv_cache, num_q_heads, scale)
        self.slot_mapping = slot_mapping

    def plan(self, batch: AttentionBatch) -> None:
        raise TypeError("graph attention is planned by its bucket (plan_step), not per batch")

    def plan_step(self, indptr_cpu: torch.Tensor, indices_gpu: torch.Tensor,
                  last_cpu: torch.Tensor) -> None:
        """Prepare one step whose layout is already staged (no sync)."""

    def _store(self, layer_id: int, k: torch.Tensor, v: torch.Tensor):
        cache = self.kv_cache
        k_cache, v_cache = cache.k_pages[layer_id], cache.v_pages[layer_id]
        kv_store_triton(k_cache, v_cache, self.slot_mapping, k, v)
        return k_cache, v_cache


class FlashInferGraphAttention(GraphAttention):
    def __init__(self, kv_cache: KVCache, num_q_heads: int, scale: float,
                 slot_mapping: torch.Tensor, indices_buffer: torch.Tensor,
                 workspace: torch.Tensor, tensor_cores: bool = False) -> None:
        """``indices_buffer``: the wrapper's own page-id buffer, as long as any step's."""
        super().__init__(kv_cache, num_q_heads, scale, slot_mapping)
        import flashinfer

        bucket, device = slot_mapping.numel(), kv_cache.device
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace, kv_layout="NHD", use_cuda_graph=True, use_tensor_cores=tensor_cores,
            paged_kv_indptr_buffer=torch.zeros(bucket + 1, dtype=torch.int32, device=device),
            paged_kv_indices_buffer=indices_buffer,
            paged_kv_last_page_len_buffer=torch.zeros(bucket, dtype=torch.int32, device=device),
        )

    def plan_step(self, indptr_cpu: torch.Tensor, indices_gpu: torch.Tensor,
                  last_cpu: torch.Tensor) -> None:
        cache = self.kv_cache
        self.wrapper.plan(
            indptr_cpu, indices_gpu, last_cpu, self.num_q_heads, cache.num_kv_heads,
            cache.head_dim, cache.page_size, sm_scale=self.scale, q_data_type=cache.dtype,
            kv_data_type=cache.dtype, non_blocking=True,
        )

    def forward(self, layer_id: int, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self._store(layer_id, k, v)
        q = q if q.is_contiguous() else q.contiguous()
        return self.wrapper.run(q, (k_cache, v_cache))


# AGENTSPEED_DECODE_MAX_SPLITS=<n> (A/B runs): at most n KV splits a row in the decode graphs.
MAX_GRAPH_SPLITS = int(os.environ.get("AGENTSPEED_DECODE_MAX_SPLITS") or 64)
# AGENTSPEED_DECODE_BLOCK_N=<n> (A/B runs): keys per loop step of the decode graphs' attention
# (32 was 0.4-0.8 us a layer ahead of 64 at batch 1 on an H100 in decode_kernels.py's grid).
GRAPH_BLOCK_N = int(os.environ.get("AGENTSPEED_DECODE_BLOCK_N") or 64)
# AGENTSPEED_PREFETCH_O_MB=<mb> (A/B runs, off by default): in graphs of at most
# PREFETCH_MAX_BUCKET rows (AGENTSPEED_PREFETCH_MAX_BUCKET, default 2), the decode kernel asks
# L2 for the first <mb> MB of the layer's o_proj weight, so the GEMV after it reads that part
# from L2: short-context attention is latency-bound and leaves DRAM idle for ~8 us a layer
# (docs/benchmarks.md, B1).
PREFETCH_O_BYTES = int(float(os.environ.get("AGENTSPEED_PREFETCH_O_MB") or 0) * (1 << 20))
PREFETCH_MAX_BUCKET = int(os.environ.get("AGENTSPEED_PREFETCH_MAX_BUCKET") or 2)
# ... and only from rows of at most this many tokens: at 4K a row's KV is 16 MB a layer, read at
# copy speed in about as long as the short-context attention takes.
PREFETCH_MAX_KV = 4096
L2_LINE_BYTES = 128


def prefetch_lines(numel: int, itemsize: int, num_programs: int) -> int:
    """L2 lines each of ``num_programs`` programs asks for so that together they cover
    ``numel`` elements (a power of two, for ``tl.arange``)."""
    lines = -(-numel * itemsize // L2_LINE_BYTES)
    return next_pow2(-(-lines // num_programs))


def triton_graph_splits(bucket: int, num_kv_heads: int, num_sms: int,
                        max_splits: int = MAX_GRAPH_SPLITS) -> int:
    """KV splits per row for a bucket: the eager backend's rule (``decode_splits``) with every
    row of the bucket counted, since the graph serves any context lengths."""
    return decode_splits(bucket, num_kv_heads, num_sms, max_splits)


class TritonGraphAttention(GraphAttention):
    def __init__(self, kv_cache: KVCache, num_q_heads: int, scale: float,
                 slot_mapping: torch.Tensor, indices_gpu: torch.Tensor,
                 kv_indptr: torch.Tensor, kv_last: torch.Tensor, num_splits: int,
                 block_n: int = GRAPH_BLOCK_N, num_warps: int = 4,
                 num_stages: int | None = None, prefetch: list[torch.Tensor] | None = None,
                 prefetch_bytes: int = 0) -> None:
        """``block_n`` keys per loop step; ``num_stages`` of its software pipeline, None for
        what benchmarks/decode_kernels.py measured best: 2 below 32 rows, 3 from there (-22%
        at 64 x 640 on an H200, within 1% elsewhere). ``prefetch``: one weight per layer, of
        which the decode kernel asks L2 for the first ``prefetch_bytes``."""
        super().__init__(kv_cache, num_q_heads, scale, slot_mapping)
        assert num_q_heads % kv_cache.num_kv_heads == 0, "query heads must group over KV heads"
        self.indices_gpu, self.kv_indptr, self.kv_last = indices_gpu, kv_indptr, kv_last
        self.group = num_q_heads // kv_cache.num_kv_heads
        self.num_splits = num_splits
        bucket, head_dim = slot_mapping.numel(), kv_cache.head_dim
        self.block_n, self.num_warps = block_n, num_warps
        self.num_stages = num_stages or (2 if bucket < 32 else 3)
        shape = (bucket, num_q_heads, num_splits)
        self.mid_o = torch.empty((*shape, head_dim), dtype=torch.float32, device=kv_cache.device)
        self.mid_lse = torch.empty(shape, dtype=torch.float32, device=kv_cache.device)
        self.prefetch: list[dict] = []
        for weight in prefetch if prefetch and prefetch_bytes > 0 else ():
            numel = min(weight.numel(), prefetch_bytes // weight.element_size())
            lines = prefetch_lines(numel, weight.element_size(), bucket * kv_cache.num_kv_heads
                                   * num_splits)
            self.prefetch.append(dict(PREFETCH=weight, prefetch_numel=numel,
                                      prefetch_max_kv=PREFETCH_MAX_KV, PREFETCH_LINES=lines,
                                      PREFETCH_LINE=L2_LINE_BYTES // weight.element_size()))

    def forward(self, layer_id: int, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self._store(layer_id, k, v)
        cache = self.kv_cache
        assert q.stride(2) == 1, "attention needs contiguous head_dim"
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        rows, splits, head_dim = q.shape[0], self.num_splits, cache.head_dim
        split = splits > 1
        mid_o, mid_lse = (self.mid_o, self.mid_lse) if split else (out, out)
        block_d = next_pow2(head_dim)
        unused = self.kv_indptr  # the padded-table arguments CSR mode never reads
        tk.decode_kernel[(rows, cache.num_kv_heads, splits)](
            q, k_cache, v_cache, out, mid_o, mid_lse, unused, unused, unused, self.indices_gpu,
            self.scale * 1.4426950408889634, q.stride(0), q.stride(1), out.stride(0),
            out.stride(1), 0, self.num_q_heads, cache.num_kv_heads, head_dim, self.group, 0,
            splits, self.kv_indptr, self.kv_last, PAGE_SIZE=cache.page_size, SPLIT=split,
            BLOCK_H=max(16, next_pow2(self.group)), BLOCK_N=self.block_n, BLOCK_D=block_d,
            CSR=True, DYN_SPLIT=True, num_warps=self.num_warps, num_stages=self.num_stages,
            **(self.prefetch[layer_id] if self.prefetch else {}), **pdl_args(q),
        )
        if split:
            tk.merge_kernel[(rows, self.num_q_heads)](
                out, mid_o, mid_lse, unused, unused, unused, self.kv_indptr, self.kv_last,
                out.stride(0), out.stride(1), 0, self.num_q_heads, head_dim, 0, splits,
                PAGE_SIZE=cache.page_size, BLOCK_N=self.block_n, BLOCK_S=next_pow2(splits),
                BLOCK_D=block_d, CSR=True, DYN_SPLIT=True, num_warps=self.num_warps,
                **pdl_args(q),
            )
        return out
