"""Write new key/value rows into the paged KV cache at their slots (one launch for k and v).

The cache tensors are ``(num_pages, page_size, num_kv_heads, head_dim)`` (contiguous), so slot
``page * page_size + offset`` is row ``slot`` of the flattened first two dims. ``k``/``v`` may be
strided views into a fused qkv tensor; they are cast to the cache dtype on the way in.
"""

from __future__ import annotations

import torch

from kernels._triton import jit, pdl_args, pdl_wait, tl, triton, use_triton


def kv_store_ref(
    k_cache: torch.Tensor,  # (num_pages, page_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor,  # same
    slot_mapping: torch.Tensor,  # (num_tokens,) int64 or int32
    k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    v: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
) -> None:
    num_kv_heads, head_dim = k_cache.shape[-2:]
    slots = slot_mapping.long()
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v.to(v_cache.dtype))


@jit
def _kv_store_kernel(
    K, V, K_CACHE, V_CACHE, SLOTS,
    stride_kt, stride_kh, stride_vt, stride_vh,
    num_kv_heads, head_dim,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    tok = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads < num_kv_heads)[:, None] & (dims < head_dim)[None, :]
    slot = tl.load(SLOTS + tok).to(tl.int64)
    dst = slot * num_kv_heads * head_dim + heads[:, None] * head_dim + dims[None, :]
    k = tl.load(K + tok * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(V + tok * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    tl.store(K_CACHE + dst, k.to(K_CACHE.dtype.element_ty), mask=mask)
    tl.store(V_CACHE + dst, v.to(V_CACHE.dtype.element_ty), mask=mask)


def kv_store_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    num_tokens, num_kv_heads, head_dim = k.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "KV cache must be contiguous"
    assert k_cache.shape[-2:] == (num_kv_heads, head_dim), "k does not match the cache"
    assert k.stride(2) == 1 and v.stride(2) == 1, "kv_store needs contiguous head_dim"
    if num_tokens == 0:
        return
    block_d = triton.next_power_of_2(head_dim)
    block_h = max(1, min(triton.next_power_of_2(num_kv_heads), 4096 // block_d))
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _kv_store_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        num_kv_heads, head_dim,
        BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4, **pdl_args(k),
    )


def kv_store(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Scatter ``k``/``v`` rows to ``slot_mapping``; Triton on CUDA, the reference elsewhere."""
    fn = kv_store_triton if use_triton(k) else kv_store_ref
    fn(k_cache, v_cache, slot_mapping, k, v)
