"""RMSNorm, optionally fused with the residual add that precedes it.

``rmsnorm(x, weight, eps, residual)`` returns ``(out, new_residual)``: with a residual it forms
``h = x + residual`` (rounded to ``x.dtype``, as an unfused model would) and normalises ``h``;
without one ``h = x``. Either way ``new_residual`` is ``h``, the residual stream the next layer
adds to, so a decoder layer runs one kernel where it would run two.
"""

from __future__ import annotations

import torch

from kernels._triton import jit, next_pow2, pdl_args, pdl_wait, tl, use_triton


def rmsnorm_ref(
    x: torch.Tensor,  # (num_tokens, hidden) any float dtype
    weight: torch.Tensor,  # (hidden,)
    eps: float,
    residual: torch.Tensor | None = None,  # (num_tokens, hidden) like x
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch (the engine's ``RMSNorm`` arithmetic): float32 statistics, weight last."""
    h = x if residual is None else x + residual
    h32 = h.float()
    normed = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(h.dtype), h


@jit
def _rmsnorm_kernel(
    X, R, W, OUT, NEW_R,
    stride_x, stride_r, stride_o, stride_nr,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    pdl_wait(USE_PDL)
    h = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(NEW_R + row * stride_nr + cols, h, mask=mask)
    h32 = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h32 * h32, axis=0) / hidden + eps)
    tl.store(OUT + row * stride_o + cols, (h32 * rstd * w).to(OUT.dtype.element_ty), mask=mask)


def rmsnorm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version; rows may be strided but each row must be contiguous."""
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    assert x2.stride(-1) == 1 and weight.is_contiguous(), "rmsnorm needs contiguous rows"
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if residual is None:
        r2, new_r = x2, x  # never read or written by the kernel
    else:
        r2 = residual.reshape(-1, hidden)
        assert r2.stride(-1) == 1, "rmsnorm needs contiguous residual rows"
        new_r = torch.empty_like(x2)
    block = next_pow2(hidden)
    num_warps = min(max(block // 256, 1), 16)
    _rmsnorm_kernel[(x2.shape[0],)](
        x2, r2, weight, out, new_r if residual is not None else out,
        x2.stride(0), r2.stride(0), out.stride(0), out.stride(0),
        hidden, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps, **pdl_args(x2),
    )
    if residual is not None:
        new_r = new_r.view(x.shape)
    return out.view(x.shape), new_r


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, new_residual)``; Triton on CUDA, the torch reference elsewhere."""
    if use_triton(x):
        return rmsnorm_triton(x, weight, eps, residual)
    return rmsnorm_ref(x, weight, eps, residual)
