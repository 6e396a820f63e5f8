"""``x @ W^T`` for a handful of rows (decode at small batch): a memory-bound Triton GEMV.

At batch 1 a linear layer reads its whole weight to produce one row, so its speed is the copy
bandwidth it reaches. cuBLAS picks split-K GEMM kernels for these shapes that stop at about 75%
of it on the smaller projections of an 8B model (``docs/benchmarks.md``). Here each program owns
``BLOCK_N`` output features and streams their weight rows once, ``BLOCK_K`` columns at a time
(16-byte loads, the weight marked evict-first), for every one of the ``M <= MAX_ROWS`` input
rows at once; the sum stays in float32 and the output is rounded once, like cuBLAS.

``linear`` picks this kernel only where it was measured to win (``gemv_config``: CUDA,
bf16/fp16, one or two rows, ``set_gemv(True)``); everything else is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import jit, next_pow2, pdl_args, pdl_wait, tl, triton, use_triton
from kernels.ops.silu_mul import silu_mul as silu_mul_op

MAX_ROWS = 4
# (BLOCK_N, BLOCK_K, num_warps): the best of benchmarks/decode_kernels.py's grid for the larger
# Qwen3-8B projections (qkv, gate_up) at one row, on an H200.
DEFAULT_CONFIG = (8, 512, 4)

_ENABLED = False  # set_gemv; the engine sets it from EngineConfig.gemv


# One row: the GEMV up to this many output features. On an H100 it beat cuBLAS on every
# Qwen3-8B projection, gate_up's 24576 included (+6%; a tie on an H200); the LM head's
# vocabulary-wide matmul stays on cuBLAS, which reads it at copy speed.
ONE_ROW_MAX_OUT = 32768


def gemv_config(rows: int, out_features: int) -> tuple[int, int, int] | None:
    """The tile config where the GEMV beat cuBLAS in benchmarks/decode_kernels.py (H200 and
    H100, bf16, Qwen3-8B shapes, docs/benchmarks.md), else None: one row up to
    ``ONE_ROW_MAX_OUT`` output features (o/down +10-23%, qkv +5%, gate_up +6% on an H100), two
    rows up to 4096 (+9-14% on an H200); at four rows and on wider layers cuBLAS wins."""
    if rows == 1 and out_features <= 4096:
        return (4, 512, 4)
    if rows == 1 and out_features <= ONE_ROW_MAX_OUT:
        return (8, 512, 4)
    if rows == 2 and out_features <= 4096:
        return (4, 1024, 4)
    return None


def set_gemv(enabled: bool) -> bool:
    """Route small-batch CUDA linears through the Triton GEMV; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled
    return previous


@jit
def _gemv_x(x_ptrs, K, k0, x_mask, SILU_MUL: tl.constexpr, DTYPE: tl.constexpr):
    """The float32 input tile at ``k0`` (``SILU_MUL``: ``silu(gate) * up`` rounded like
    ``kernels.ops.silu_mul``)."""
    x = tl.load(x_ptrs + k0, mask=x_mask, other=0.0).to(tl.float32)
    if SILU_MUL:
        up = tl.load(x_ptrs + k0 + K, mask=x_mask, other=0.0).to(tl.float32)
        act = (x / (1.0 + tl.exp(-x))).to(DTYPE).to(tl.float32)
        x = (act * up).to(DTYPE).to(tl.float32)
    return x


@jit
def _gemv_kernel(
    X, W, B, Y, M, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, EVEN: tl.constexpr, SILU_MUL: tl.constexpr, USE_PDL: tl.constexpr,
):
    """One program: ``BLOCK_N`` output features of all (at most ``BLOCK_M``) rows.

    The weight tile of step ``k`` is loaded before the product of step ``k - 1`` (two tiles in
    flight), and the first one before ``pdl_wait``: under PDL it streams while the previous
    kernel finishes. ``SILU_MUL``: each row of ``X`` is ``[gate | up]`` (2K wide) and the input
    is ``silu(gate) * up``, rounded as ``kernels.ops.silu_mul`` rounds it."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    m_mask = offs_m < M
    w_ptrs = W + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    x_ptrs = X + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    if EVEN:
        w = tl.load(w_ptrs, eviction_policy="evict_first")
    else:
        w = tl.load(w_ptrs, mask=n_mask[:, None] & (offs_k < K)[None, :], other=0.0,
                    eviction_policy="evict_first")
    pdl_wait(USE_PDL)
    # Products accumulate elementwise; the one reduction over K happens after the loop.
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        if EVEN:
            w_next = tl.load(w_ptrs + k0, eviction_policy="evict_first")
            x_mask = m_mask[:, None]
        else:
            w_next = tl.load(w_ptrs + k0, mask=n_mask[:, None] & (k0 + offs_k < K)[None, :],
                             other=0.0, eviction_policy="evict_first")
            x_mask = m_mask[:, None] & (k0 - BLOCK_K + offs_k < K)[None, :]
        x = _gemv_x(x_ptrs, K, k0 - BLOCK_K, x_mask, SILU_MUL, X.dtype.element_ty)
        acc += x[:, None, :] * w.to(tl.float32)[None, :, :]
        w = w_next
    last = tl.cdiv(K, BLOCK_K) * BLOCK_K - BLOCK_K
    x = _gemv_x(x_ptrs, K, last, m_mask[:, None] & (last + offs_k < K)[None, :], SILU_MUL,
                X.dtype.element_ty)
    acc += x[:, None, :] * w.to(tl.float32)[None, :, :]
    y = tl.sum(acc, axis=2)
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = Y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: tuple[int, int, int] = DEFAULT_CONFIG,
                silu_mul: bool = False) -> torch.Tensor:
    """(M, K) x (N, K) -> (M, N) for ``M <= MAX_ROWS``; rows of ``x`` and ``weight`` must be
    contiguous. ``silu_mul``: ``x`` is (M, 2K) ``[gate | up]``, the input ``silu(gate) * up``."""
    m, k = x.shape[0], x.shape[1] // (2 if silu_mul else 1)
    n = weight.shape[0]
    assert m <= MAX_ROWS and weight.shape[1] == k and x.shape[1] == k * (2 if silu_mul else 1), (
        f"gemv of {tuple(x.shape)} x {tuple(weight.shape)}")
    assert x.stride(1) == 1 and weight.stride(1) == 1, "gemv needs contiguous rows"
    block_n, block_k, num_warps = config
    block_m = next_pow2(m)
    block_k = min(max(64, block_k // block_m), next_pow2(k))  # the accumulator is M x N x K
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    even = k % block_k == 0 and n % block_n == 0
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, out, m, n, k, x.stride(0),
        weight.stride(0), out.stride(0), HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, EVEN=even, SILU_MUL=silu_mul,
        num_warps=num_warps, **pdl_args(x),
    )
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           silu_mul: bool = False) -> torch.Tensor:
    """``F.linear``, through the Triton GEMV for one or two rows of half-precision CUDA input
    where ``gemv_config`` says it is faster. ``silu_mul``: ``x`` is ``[gate | up]`` and the
    input is ``silu(gate) * up`` (fused into the GEMV when it runs, else ``ops.silu_mul``)."""
    if (_ENABLED and x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and use_triton(x)
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and x.stride(1) == 1 and weight.stride(1) == 1):
        config = gemv_config(x.shape[0], weight.shape[0])
        if config is not None:
            return gemv_triton(x, weight, bias, config, silu_mul)
    return F.linear(silu_mul_op(x) if silu_mul else x, weight, bias)
