"""Rotate-half (NeoX) RoPE applied to q and k in place, optionally after Qwen3's q/k RMSNorm.

Dimension ``i`` pairs with ``i + head_dim / 2``; ``cos``/``sin`` are ``(max_positions,
head_dim / 2)`` float32 tables indexed by each token's position (the engine's
``RotaryEmbedding`` buffers). With ``q_norm_weight``/``k_norm_weight`` each head is first
RMS-normalised over ``head_dim`` (Qwen3), so one kernel replaces three. ``q`` and ``k`` may be
strided views into a fused qkv tensor (rows of heads contiguous in ``head_dim``); they are
written in place.
"""

from __future__ import annotations

import torch

from kernels._triton import jit, next_pow2, pdl_args, pdl_wait, tl, use_triton


def _head_rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate_half_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def rope_ref(
    positions: torch.Tensor,  # (num_tokens,) int64
    q: torch.Tensor,  # (num_tokens, num_q_heads, head_dim)
    k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    cos: torch.Tensor,  # (max_positions, head_dim / 2) float32
    sin: torch.Tensor,  # (max_positions, head_dim / 2) float32
    q_norm_weight: torch.Tensor | None = None,  # (head_dim,)
    k_norm_weight: torch.Tensor | None = None,  # (head_dim,)
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch, same rounding points as the engine's layers; writes q and k in place."""
    c = cos.index_select(0, positions).unsqueeze(1)
    s = sin.index_select(0, positions).unsqueeze(1)
    for x, w in ((q, q_norm_weight), (k, k_norm_weight)):
        y = x if w is None else _head_rmsnorm_ref(x, w, eps)
        x.copy_(_rotate_half_ref(y, c, s))
    return q, k


@jit
def _rope_heads(
    X, W, tok, c, s, stride_t, stride_h, num_heads, half, eps,
    HAS_NORM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    mask = (heads < num_heads)[:, None] & (dims < half)[None, :]
    ptr = X + tok * stride_t + heads[:, None] * stride_h + dims[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + half, mask=mask, other=0.0)
    if HAS_NORM:
        a = x1.to(tl.float32)
        b = x2.to(tl.float32)
        rstd = tl.rsqrt((tl.sum(a * a, axis=1) + tl.sum(b * b, axis=1)) / (2 * half) + eps)
        w1 = tl.load(W + dims, mask=dims < half, other=0.0)
        w2 = tl.load(W + half + dims, mask=dims < half, other=0.0)
        # Round where the unfused model rounds: after normalising, and after the weight.
        x1 = (a * rstd[:, None]).to(X.dtype.element_ty) * w1[None, :]
        x2 = (b * rstd[:, None]).to(X.dtype.element_ty) * w2[None, :]
        x1 = x1.to(X.dtype.element_ty)
        x2 = x2.to(X.dtype.element_ty)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(ptr, (a * c - b * s).to(X.dtype.element_ty), mask=mask)
    tl.store(ptr + half, (b * c + a * s).to(X.dtype.element_ty), mask=mask)


@jit
def _rope_kernel(
    POS, Q, K, COS, SIN, QW, KW,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cos,
    num_q_heads, num_kv_heads, half, eps,
    HAS_NORM: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(POS + tok).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    c = tl.load(COS + pos * stride_cos + dims, mask=dims < half, other=0.0).to(tl.float32)
    s = tl.load(SIN + pos * stride_cos + dims, mask=dims < half, other=0.0).to(tl.float32)
    if tl.program_id(1) == 0:
        _rope_heads(Q, QW, tok, c[None, :], s[None, :], stride_qt, stride_qh, num_q_heads, half,
                    eps, HAS_NORM, BLOCK_HQ, BLOCK_HALF)
    else:
        _rope_heads(K, KW, tok, c[None, :], s[None, :], stride_kt, stride_kh, num_kv_heads, half,
                    eps, HAS_NORM, BLOCK_HK, BLOCK_HALF)


def rope_triton(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version: one program per (token, q-or-k), all heads of that token at once."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert head_dim % 2 == 0 and k.shape[2] == head_dim, "rope needs an even, shared head_dim"
    assert q.stride(2) == 1 and k.stride(2) == 1, "rope needs contiguous head_dim"
    assert cos.stride(1) == 1 and sin.stride() == cos.stride(), "cos/sin tables must match"
    has_norm = q_norm_weight is not None
    assert has_norm == (k_norm_weight is not None), "q and k norms come together"
    if num_tokens == 0:
        return q, k
    half = head_dim // 2
    _rope_kernel[(num_tokens, 2)](
        positions, q, k, cos, sin,
        q_norm_weight if has_norm else cos, k_norm_weight if has_norm else cos,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
        num_q_heads, num_kv_heads, half, eps,
        HAS_NORM=has_norm, BLOCK_HQ=next_pow2(num_q_heads), BLOCK_HK=next_pow2(num_kv_heads),
        BLOCK_HALF=next_pow2(half), num_warps=4, **pdl_args(q),
    )
    return q, k


def apply_rope(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place (optionally q/k-normed) RoPE; Triton on CUDA, the torch reference elsewhere."""
    fn = rope_triton if use_triton(q) else rope_ref
    return fn(positions, q, k, cos, sin, q_norm_weight, k_norm_weight, eps)
