"""Dense decoder LMs of the Llama family: Llama (SmolLM2), Qwen2 and Qwen3, from an HF config.

They differ only in details the config tells: Qwen2 has a bias on q/k/v, Qwen3 normalises each
query and key head (RMSNorm) before RoPE, and small models tie the LM head to the embedding.
The batch is one flat run of tokens from many sequences; attention reaches the paged KV cache
through the backend, which was planned for this batch before ``forward``.

q/k/v live in one ``qkv_proj`` and gate/up in one ``gate_up_proj`` (one matmul each); head counts
stay attributes so tensor parallelism can later shard these layers by heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.default_model import eos_token_ids
from engine.models.layers import (
    GatedMLP,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    rope_parameters,
    use_fused,
)
from kernels import ops
from kernels.attention import AttentionBackend


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Attention(nn.Module):
    def __init__(
        self, config: Any, layer_id: int, dtype: torch.dtype, rotary: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        # Qwen2 configs carry no ``attention_bias`` flag, yet their q/k/v always have a bias.
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        # Rows: [q | k | v]; the loader fills them at offsets 0, q_size, q_size + kv_size.
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias, dtype=dtype
        )
        self.o_proj = Linear(
            self.q_size, config.hidden_size,
            bias=bool(getattr(config, "attention_bias", False)), dtype=dtype,
        )
        self.qk_norm = config.model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
        self.rotary = rotary

    def forward(
        self,
        positions: torch.Tensor,  # (num_tokens,) int64
        x: torch.Tensor,  # (num_tokens, hidden_size)
        attn: AttentionBackend,
    ) -> torch.Tensor:  # (num_tokens, hidden_size)
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # (num_tokens, num_heads, head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # (num_tokens, num_kv_heads, head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if use_fused(q):
            # One kernel: per-head q/k RMSNorm (Qwen3) and RoPE, in place in the qkv output.
            rot = self.rotary
            q_w, k_w = (self.q_norm.weight, self.k_norm.weight) if self.qk_norm else (None, None)
            eps = self.q_norm.eps if self.qk_norm else 1e-6
            q, k = ops.apply_rope(positions, q, k, rot.cos, rot.sin, q_w, k_w, eps)
        else:
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary(positions, q, k)
        out = attn.forward(self.layer_id, q, k, v)  # (num_tokens, num_heads, head_dim)
        return self.o_proj(out.reshape(-1, self.q_size))


class DecoderLayer(nn.Module):
    def __init__(
        self, config: Any, layer_id: int, dtype: torch.dtype, rotary: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_id, dtype, rotary)
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, dtype,
            bias=bool(getattr(config, "mlp_bias", False)),
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(
        self,
        positions: torch.Tensor,  # (num_tokens,) int64
        x: torch.Tensor,  # (num_tokens, hidden_size)
        residual: torch.Tensor | None,  # (num_tokens, hidden_size); None before layer 0
        attn: AttentionBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual add is deferred into the next norm: each layer returns (delta, running sum).
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, attn)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    """One class for llama / qwen2 / qwen3 dense checkpoints (HF parameter names on load)."""

    def __init__(self, config: Any, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.num_layers: int = config.num_hidden_layers
        self.num_heads: int = config.num_attention_heads
        self.num_kv_heads: int = config.num_key_value_heads
        self.head_dim: int = _head_dim(config)
        self.hidden_size: int = config.hidden_size
        self.intermediate_size: int = config.intermediate_size
        self.vocab_size: int = config.vocab_size
        self.eos_token_ids: list[int] = eos_token_ids(config)
        max_positions = getattr(config, "max_position_embeddings", None) or 4096
        rotary = RotaryEmbedding(self.head_dim, max_positions, rope_parameters(config))
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, dtype, rotary) for i in range(self.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            self.lm_head = nn.Linear(
                config.hidden_size, config.vocab_size, bias=False, dtype=dtype
            )

    def forward(
        self,
        input_ids: torch.Tensor,  # (num_tokens,) int64
        positions: torch.Tensor,  # (num_tokens,) int64
        attn: AttentionBackend,  # already planned for this batch
    ) -> torch.Tensor:  # (num_tokens, hidden_size)
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, attn)
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, hidden_size) -> (n, vocab_size) float32."""
        weight = self.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight
        return F.linear(hidden, weight).float()

    # ------------------------------------------------------------------ loading
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into our (partly fused) parameters.

        Raises ``ValueError`` for a tensor with no place in the model, a shape mismatch, or a
        parameter (or fused slice) the checkpoint never filled.
        """
        params = dict(self.named_parameters())
        loaded: set[tuple[str, int]] = set()
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if "rotary_emb." in name:
                continue  # HF's cached inv_freq; we recompute it
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue  # some tied checkpoints still store a copy of the embedding
            target, offset = self._fused_target(name)
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
            if offset is not None and offset + tensor.shape[0] > param.shape[0]:
                raise ValueError(f"{hf_name}: {tensor.shape[0]} rows overflow {target}")
            part = param if offset is None else param.narrow(0, offset, tensor.shape[0])
            if part.shape != tensor.shape:
                raise ValueError(
                    f"{hf_name}: shape {tuple(tensor.shape)} != expected {tuple(part.shape)}"
                )
            with torch.no_grad():
                part.copy_(tensor)
            loaded.add((target, offset or 0))
        missing = self._expected_slices(params) - loaded
        if missing:
            names = sorted(f"{name}@{offset}" for name, offset in missing)
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {names[:3]}")

    def _fused_offsets(self) -> dict[str, tuple[str, int]]:
        """HF projection name -> (our fused projection, first row of its slice)."""
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        return {
            "self_attn.q_proj": ("self_attn.qkv_proj", 0),
            "self_attn.k_proj": ("self_attn.qkv_proj", q_size),
            "self_attn.v_proj": ("self_attn.qkv_proj", q_size + kv_size),
            "mlp.gate_proj": ("mlp.gate_up_proj", 0),
            "mlp.up_proj": ("mlp.gate_up_proj", self.intermediate_size),
        }

    def _fused_target(self, name: str) -> tuple[str, int | None]:
        """``layers.3.self_attn.k_proj.weight`` -> (``layers.3.self_attn.qkv_proj.weight``,
        q_size): our parameter and the first row of the slice, or (name, None) if unfused."""
        for hf_part, (our_part, offset) in self._fused_offsets().items():
            if f".{hf_part}." in name:
                return name.replace(f".{hf_part}.", f".{our_part}."), offset
        return name, None

    def _expected_slices(self, params: dict[str, nn.Parameter]) -> set[tuple[str, int]]:
        slices_of: dict[str, list[int]] = {}
        for our_part, offset in self._fused_offsets().values():
            slices_of.setdefault(our_part, []).append(offset)
        expected: set[tuple[str, int]] = set()
        for name in params:
            fused = next((p for p in slices_of if f".{p}." in name), None)
            offsets = slices_of[fused] if fused else [0]
            expected |= {(name, offset) for offset in offsets}
        return expected
