"""Building blocks shared by the dense decoder models: RMSNorm, rotary embedding, gated MLP."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32; with ``residual`` it adds first and returns the new residual."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is not None:
            x = x + residual
            residual = x
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * x32.to(x.dtype)
        return out if residual is None else (out, residual)


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE settings from a transformers 5 ``rope_parameters`` or an older config."""
    params = getattr(config, "rope_parameters", None)
    if params:
        params = dict(params)
        if "full_attention" in params and isinstance(params["full_attention"], dict):
            params = dict(params["full_attention"])
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.pop("type", "default") or "default")
    return params


def _inv_freq(head_dim: int, params: dict[str, Any], max_positions: int) -> torch.Tensor:
    base = float(params.get("rope_theta", 10000.0))
    # float32 throughout, as transformers computes it, so fp32 logits agree to the last bits.
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    kind = params.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / float(params["factor"])
    elif kind == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        scaled = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
        inv_freq = scaled
    elif kind != "default":
        raise ValueError(f"rope_type {kind!r} is not supported")
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Rotate-half (NeoX) RoPE with a precomputed cos/sin table indexed by position."""

    def __init__(self, head_dim: int, max_positions: int, params: dict[str, Any]) -> None:
        super().__init__()
        inv_freq = _inv_freq(head_dim, params, max_positions)
        t = torch.arange(max_positions, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)  # (max_positions, head_dim / 2)
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q (T, H, D), k (T, KVH, D) -> rotated copies, same dtypes."""
        cos = self.cos.index_select(0, positions).unsqueeze(1)  # (T, 1, D/2)
        sin = self.sin.index_select(0, positions).unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


class GatedMLP(nn.Module):
    """SiLU(gate) * up, with gate and up fused in one matmul."""

    def __init__(self, hidden: int, intermediate: int, dtype: torch.dtype, bias: bool = False):
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=bias, dtype=dtype)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.gate_up_proj.out_features // 2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
