"""Building blocks shared by the dense decoder models: RMSNorm, rotary embedding, gated MLP.

Each is the plain-PyTorch reference; fused kernels (``kernels/``) must match these numerically.
On CUDA tensors the layers call the fused kernels of ``kernels.ops`` instead (RMSNorm + residual,
Qwen3's q/k norm + RoPE in place, SiLU-mul); CPU tensors always take the reference code, so CPU
results do not depend on whether Triton is installed. ``set_fused_ops(False)`` turns the fused
path off (the GPU tests' reference).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops

_FUSED_OPS = True  # module-wide switch read at each call (and so frozen into captured graphs)


def set_fused_ops(enabled: bool) -> bool:
    """Use the fused CUDA kernels for CUDA tensors (default on); returns the previous setting."""
    global _FUSED_OPS
    previous, _FUSED_OPS = _FUSED_OPS, enabled
    return previous


def use_fused(x: torch.Tensor) -> bool:
    return _FUSED_OPS and x.is_cuda


class Linear(nn.Linear):
    """``nn.Linear`` whose few-row half-precision CUDA calls may take the Triton GEMV
    (``kernels.ops.gemv.linear``, off unless ``set_gemv(True)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)

    def forward_silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``forward(silu(gate) * up)`` of a ``[gate | up]`` CUDA tensor, fused into the GEMV
        where it runs."""
        return ops.linear(gate_up, self.weight, self.bias, silu_mul=True)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, optionally fused with the residual add (the vLLM way).

    ``norm(x)`` returns the normed tensor; ``norm(x, residual)`` first forms ``x + residual``,
    and returns ``(normed, x + residual)`` so the caller carries the sum to the next layer
    without a separate add kernel.
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if use_fused(x):
            out, new_residual = ops.rmsnorm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, new_residual)
        if residual is not None:
            x = x + residual
            residual = x
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before scaling by the weight: that is where HF rounds for half dtypes.
        out = self.weight * x32.to(x.dtype)
        return out if residual is None else (out, residual)


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE settings (``rope_type``, ``rope_theta`` and scaling keys) from any config style.

    transformers 5 keeps them in ``config.rope_parameters`` (possibly one dict per layer type);
    older configs have ``rope_theta`` plus an optional ``rope_scaling`` dict keyed by ``type``.
    """
    params = getattr(config, "rope_parameters", None)
    if params:
        params = dict(params)
        if isinstance(params.get("full_attention"), dict):
            params = dict(params["full_attention"])
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", None) or 10000.0
    legacy_type = params.pop("type", None)
    params["rope_type"] = params.get("rope_type") or legacy_type or "default"
    return params


def rope_inv_freq(head_dim: int, params: dict[str, Any]) -> torch.Tensor:
    """Inverse frequencies (head_dim / 2,) float32 for ``default``, ``linear`` and ``llama3``."""
    base = float(params["rope_theta"])
    # Same float32 arithmetic order as transformers, so fp32 logits agree to the last bits.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / base**exponents
    kind = params["rope_type"]
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(params["factor"])
    if kind == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by ``factor``, short ones kept, the band between blended.
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, blended, scaled)
    raise ValueError(
        f"rope_type {kind!r} is not supported (supported: default, linear, llama3)"
    )


class RotaryEmbedding(nn.Module):
    """Rotate-half (NeoX) RoPE with a precomputed cos/sin table indexed by position.

    One instance is shared by every layer; the table lives on the model's device so a step
    only gathers rows (no host work per layer).
    """

    def __init__(self, head_dim: int, max_positions: int, params: dict[str, Any]) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        inv_freq = rope_inv_freq(head_dim, params)
        t = torch.arange(max_positions, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)  # (max_positions, head_dim / 2)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(
        self,
        positions: torch.Tensor,  # (num_tokens,) int64
        q: torch.Tensor,  # (num_tokens, num_heads, head_dim)
        k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos.index_select(0, positions).unsqueeze(1)  # (num_tokens, 1, head_dim / 2)
        sin = self.sin.index_select(0, positions).unsqueeze(1)
        return _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pairs dim ``i`` with ``i + head_dim / 2`` (NeoX/HF layout, not GPT-J interleaving)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """(..., 2 * d) laid out as [gate | up] -> (..., d) ``silu(gate) * up``."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused in one matmul."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, dtype: torch.dtype, bias: bool = False
    ) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        # Rows [0, intermediate) are gate_proj, [intermediate, 2 * intermediate) up_proj.
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias, dtype=dtype)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (num_tokens, hidden) -> same
        gate_up = self.gate_up_proj(x)
        if use_fused(gate_up):
            return self.down_proj.forward_silu_mul(gate_up)
        return self.down_proj(silu_and_mul(gate_up))
