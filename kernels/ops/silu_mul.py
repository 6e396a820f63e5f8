"""``silu(gate) * up`` from the fused ``[gate | up]`` output of the gate_up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import jit, tl, triton, use_triton


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """(..., 2 * d) laid out as [gate | up] -> (..., d); same arithmetic as the engine's MLP."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@jit
def _silu_mul_kernel(X, OUT, stride_x, stride_o, d, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    # Round silu(gate) to the input dtype first, where the unfused F.silu(gate) * up rounds.
    act = (gate / (1.0 + tl.exp(-gate))).to(X.dtype.element_ty).to(tl.float32)
    tl.store(OUT + row * stride_o + cols, (act * up).to(OUT.dtype.element_ty), mask=mask)


def silu_mul_triton(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    assert x2.stride(-1) == 1, "silu_mul needs contiguous rows"
    out = torch.empty((x2.shape[0], d), dtype=x.dtype, device=x.device)
    if x2.shape[0] > 0:
        grid = (x2.shape[0], triton.cdiv(d, block))
        _silu_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), d, BLOCK=block, num_warps=4)
    return out.view(*x.shape[:-1], d)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """(..., 2 * d) -> (..., d); Triton on CUDA, the torch reference elsewhere."""
    return silu_mul_triton(x) if use_triton(x) else silu_mul_ref(x)
