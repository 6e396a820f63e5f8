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

import functools
import os

import torch
import torch.nn.functional as F

from kernels._triton import jit, next_pow2, pdl_args, pdl_wait, tl, triton, use_triton
from kernels.ops.silu_mul import silu_mul as silu_mul_op

MAX_ROWS = 4
# (BLOCK_N, BLOCK_K, num_warps): the best of benchmarks/decode_kernels.py's grid for the larger
# Qwen3-8B projections (qkv, gate_up) at one row, on an H200.
DEFAULT_CONFIG = (8, 512, 4)

_ENABLED = False  # set_gemv; the engine sets it from EngineConfig.gemv


ONE_ROW_MAX_OUT_ANY = 8192  # one row: the GEMV up to this many outputs on every device
# One row, wider (gate_up: 24576 in Qwen3-8B): the GEMV only on devices where it measured faster
# end to end: B1 batch 1 +4.5% on an H100, +0.2% on an H200 (within noise: cuBLAS stays there;
# docs/benchmarks.md). Up to WIDE_MAX_OUT outputs; the LM head's vocabulary-wide matmul stays on
# cuBLAS, which reads it at copy speed.
WIDE_MAX_OUT = 32768
WIDE_DEVICES = ("H100",)  # substrings of torch.cuda.get_device_name
WIDE_CONFIG = (8, 512, 4)
# AGENTSPEED_GEMV_ONE_ROW_MAX=<n> (A/B runs, also in tensor-parallel workers): one row up to n
# outputs on any device, instead of the per-device rule.
ONE_ROW_MAX_OUT: int | None = (int(os.environ["AGENTSPEED_GEMV_ONE_ROW_MAX"])
                               if os.environ.get("AGENTSPEED_GEMV_ONE_ROW_MAX") else None)


@functools.cache
def _wide_device(index: int | None) -> bool:
    name = torch.cuda.get_device_name(index)
    return any(d in name for d in WIDE_DEVICES)


def one_row_max_out(device: torch.device | None) -> int:
    """The widest layer a one-row input takes through the GEMV on ``device``."""
    if ONE_ROW_MAX_OUT is not None:
        return ONE_ROW_MAX_OUT
    if device is not None and device.type == "cuda" and _wide_device(device.index):
        return WIDE_MAX_OUT
    return ONE_ROW_MAX_OUT_ANY


def gemv_config(rows: int, out_features: int,
                device: torch.device | None = None) -> tuple[int, int, int] | None:
    """The tile config where the GEMV beat cuBLAS in benchmarks/decode_kernels.py (H200, bf16,
    Qwen3-8B shapes, docs/benchmarks.md), else None: one row up to ``ONE_ROW_MAX_OUT_ANY``
    output features (o/down +10-23%, qkv +6%) and up to ``one_row_max_out(device)``, two rows
    up to 4096 (+9-14%); at four rows and on wider layers cuBLAS wins."""
    if rows == 1 and out_features <= 4096:
        return (4, 512, 4)
    if rows == 1 and out_features <= ONE_ROW_MAX_OUT_ANY:
        return (8, 512, 4)
    if rows == 1 and out_features <= one_row_max_out(device):
        return WIDE_CONFIG
    if rows == 2 and out_features <= 4096:
        return (4, 1024, 4)
    return None


def set_gemv(enabled: bool) -> bool:
    """Route small-batch CUDA linears through the Triton GEMV; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, enabled
    return previous


@jit
def _gemv_kernel(
    X, W, B, Y, M, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, EVEN: tl.constexpr, SILU_MUL: tl.constexpr, USE_PDL: tl.constexpr,
):
    """One program: ``BLOCK_N`` output features of all (at most ``BLOCK_M``) rows.

    ``SILU_MUL``: each row of ``X`` is ``[gate | up]`` (2K wide) and the input is
    ``silu(gate) * up``, rounded as ``kernels.ops.silu_mul`` rounds it. (Loading the first
    weight tile before ``pdl_wait``, one tile ahead of the product, cost 11% of B1 at batch 1 on
    an H200: docs/benchmarks.md.)"""
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    m_mask = offs_m < M
    w_ptrs = W + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    x_ptrs = X + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    # Products accumulate elementwise; the one reduction over K happens after the loop.
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
            x_mask = m_mask[:, None]
        else:
            k_mask = (k0 + offs_k) < K
            w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                        eviction_policy="evict_first")
            x_mask = m_mask[:, None] & k_mask[None, :]
        x = tl.load(x_ptrs, mask=x_mask, other=0.0).to(tl.float32)
        if SILU_MUL:
            up = tl.load(x_ptrs + K, mask=x_mask, other=0.0).to(tl.float32)
            act = (x / (1.0 + tl.exp(-x))).to(X.dtype.element_ty).to(tl.float32)
            x = (act * up).to(X.dtype.element_ty).to(tl.float32)
        acc += x[:, None, :] * w.to(tl.float32)[None, :, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
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
        config = gemv_config(x.shape[0], weight.shape[0], x.device)
        if config is not None:
            return gemv_triton(x, weight, bias, config, silu_mul)
    return F.linear(silu_mul_op(x) if silu_mul else x, weight, bias)
