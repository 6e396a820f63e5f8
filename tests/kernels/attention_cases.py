"""Random paged-attention batches shared by the CPU (interpreted) and GPU kernel tests.

A case scatters each sequence over shuffled pages of a cache pre-filled with random values (so a
wrong slot reads garbage, not zeros), and takes q/k/v as strided views of one fused qkv tensor,
as the model produces them. The oracle is the torch backend on a float32 copy of everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention import AttentionBatch, create_backend
from kernels.kv_cache import KVCache


@dataclass
class AttentionCase:
    batch: AttentionBatch
    cache: KVCache  # the cache under test, random contents
    q: torch.Tensor  # (num_tokens, num_q_heads, head_dim), strided view
    k: torch.Tensor  # (num_tokens, num_kv_heads, head_dim), strided view
    v: torch.Tensor  # (num_tokens, num_kv_heads, head_dim), strided view
    num_q_heads: int
    scale: float


def make_case(
    q_lens: list[int],
    kv_lens: list[int],
    page_size: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
) -> AttentionCase:
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    page_counts = [-(-kv // page_size) + (i % 2) for i, kv in enumerate(kv_lens)]  # some spare
    num_pages = sum(page_counts) + 3
    # Page 0 stays free: the decode graphs' padding rows use it as their scratch page.
    order = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
    page_table, cursor = [], 0
    for count in page_counts:
        page_table.append(order[cursor : cursor + count])
        cursor += count
    slots = []
    for q_len, kv_len, pages in zip(q_lens, kv_lens, page_table):
        for pos in range(kv_len - q_len, kv_len):
            slots.append(pages[pos // page_size] * page_size + pos % page_size)
    cache = KVCache(1, num_pages, page_size, num_kv_heads, head_dim, dtype, device)
    shape = cache.k_pages[0].shape
    cache.k_pages[0].copy_(torch.randn(shape, generator=dev_gen, device=device))
    cache.v_pages[0].copy_(torch.randn(shape, generator=dev_gen, device=device))
    num_tokens = sum(q_lens)
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(
        num_tokens, q_size + 2 * kv_size, generator=dev_gen, device=device
    ).to(dtype)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    batch = AttentionBatch(
        q_lens=list(q_lens), kv_lens=list(kv_lens), page_table=page_table,
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
    )
    return AttentionCase(
        batch=batch, cache=cache,
        q=q.view(num_tokens, num_q_heads, head_dim),
        k=k.view(num_tokens, num_kv_heads, head_dim),
        v=v.view(num_tokens, num_kv_heads, head_dim),
        num_q_heads=num_q_heads, scale=head_dim**-0.5,
    )


def float32_copy(cache: KVCache) -> KVCache:
    ref = KVCache(1, cache.num_pages, cache.page_size, cache.num_kv_heads, cache.head_dim,
                  torch.float32, cache.device)
    ref.k_pages[0].copy_(cache.k_pages[0])
    ref.v_pages[0].copy_(cache.v_pages[0])
    return ref


def reference(case: AttentionCase) -> tuple[torch.Tensor, KVCache]:
    """The float32 torch backend on a copy of the case: (output, its cache after the store)."""
    ref_cache = float32_copy(case.cache)
    ref = create_backend("torch", ref_cache, case.num_q_heads, case.scale)
    ref.plan(case.batch)
    return ref.forward(0, case.q.float(), case.k.float(), case.v.float()), ref_cache


def run_backend(name: str, case: AttentionCase) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of backend ``name``, float32 torch-reference output); also checks the KV store."""
    expected, ref_cache = reference(case)
    backend = create_backend(name, case.cache, case.num_q_heads, case.scale)
    backend.plan(case.batch)
    out = backend.forward(0, case.q, case.k, case.v)
    # The store must have written exactly the new slots, in the cache dtype.
    torch.testing.assert_close(case.cache.k_pages[0].float(), ref_cache.k_pages[0], rtol=0, atol=0)
    torch.testing.assert_close(case.cache.v_pages[0].float(), ref_cache.v_pages[0], rtol=0, atol=0)
    return out, expected


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "non-finite output"
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def run_graph_attention(kind: str, case: AttentionCase, bucket: int, num_splits: int = 4,
                        prefetch: torch.Tensor | None = None,
                        prefetch_bytes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A decode batch through the attention a decode CUDA graph captures (``kind``: triton or
    flashinfer), padded to ``bucket`` rows on the scratch page, run eagerly; returns (output of
    the real rows, float32 torch-reference output). ``prefetch``: Triton's L2 prefetch of the
    first ``prefetch_bytes`` of this weight (layer 0's)."""
    from engine.cuda_graphs import padded_kv_layout
    from engine.graph_attention import FlashInferGraphAttention, TritonGraphAttention

    batch, cache, device = case.batch, case.cache, case.cache.device
    assert all(q_len == 1 for q_len in batch.q_lens), "graph attention serves decode rows"
    n = batch.num_seqs
    expected, ref_cache = reference(case)
    indptr, indices, last = padded_kv_layout(bucket, batch.kv_lens, batch.page_table,
                                             cache.page_size)
    slots = torch.zeros(bucket, dtype=torch.int64, device=device)
    slots[:n] = batch.slot_mapping
    indices_gpu = torch.tensor(indices, dtype=torch.int32, device=device)
    if kind == "triton":
        attn = TritonGraphAttention(
            cache, case.num_q_heads, case.scale, slots, indices_gpu,
            torch.tensor(indptr, device=device), torch.tensor(last, device=device), num_splits,
            block_n=16 if device.type == "cpu" else 32,
            prefetch=[prefetch] if prefetch is not None else None, prefetch_bytes=prefetch_bytes)
    else:
        buffer = torch.zeros(len(indices) + 8, dtype=torch.int32, device=device)
        workspace = torch.zeros(128 << 20, dtype=torch.uint8, device=device)
        attn = FlashInferGraphAttention(cache, case.num_q_heads, case.scale, slots, buffer,
                                        workspace)
        attn.plan_step(torch.tensor(indptr, dtype=torch.int32).pin_memory(), indices_gpu,
                       torch.tensor(last, dtype=torch.int32).pin_memory())

    def padded(x: torch.Tensor) -> torch.Tensor:
        extra = torch.randn((bucket - n, *x.shape[1:]), device=device).to(x.dtype)
        return torch.cat([x, extra])

    q, k, v = padded(case.q), padded(case.k), padded(case.v)
    out = attn.forward(0, q, k, v)[:n]
    # A second launch over the same buffers gives the same result (nothing left behind).
    torch.testing.assert_close(attn.forward(0, q, k, v)[:n], out, rtol=0, atol=0)
    # Every real row's new k/v went to its slot; padding rows wrote the scratch page only.
    for got, want in ((cache.k_pages[0], ref_cache.k_pages[0]),
                      (cache.v_pages[0], ref_cache.v_pages[0])):
        torch.testing.assert_close(got[1:].float(), want[1:], rtol=0, atol=0)
    return out, expected
