"""Dense decoder LMs of the Llama family: Llama (SmolLM2), Qwen2 and Qwen3, from an HF config.

They differ only in details the config tells: Qwen2 has a bias on q/k/v, Qwen3 normalises each
query and key head (RMSNorm) before RoPE, and small models tie the LM head to the embedding.
The batch is one flat run of tokens from many sequences; attention reaches the paged KV cache
through the backend, which was planned for this batch before ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from engine.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, rope_parameters
from kernels.attention import AttentionBackend


class Attention(nn.Module):
    def __init__(self, config: Any, layer_id: int, dtype: torch.dtype, rotary: RotaryEmbedding):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias,
                                  dtype=dtype)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False, dtype=dtype)
        self.qk_norm = config.model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
        self.rotary = rotary

    def forward(self, positions: torch.Tensor, x: torch.Tensor, attn: AttentionBackend):
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # (T, H, D)
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # (T, KVH, D)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = attn.forward(self.layer_id, q, k, v)  # (T, H, D)
        return self.o_proj(out.reshape(-1, self.q_size))


class DecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_id: int, dtype: torch.dtype, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = Attention(config, layer_id, dtype, rotary)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, dtype,
                            bias=bool(getattr(config, "mlp_bias", False)))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(self, positions, x, residual, attn):
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
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.vocab_size = config.vocab_size
        max_positions = getattr(config, "max_position_embeddings", 4096)
        rotary = RotaryEmbedding(self.head_dim, max_positions, rope_parameters(config))
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, dtype, rotary) for i in range(self.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False,
                                     dtype=dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: AttentionBackend) -> torch.Tensor:
        """input_ids, positions (num_tokens,) int64 -> hidden (num_tokens, hidden_size)."""
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, attn)
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, hidden_size) -> (n, vocab_size) float32."""
        weight = self.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight
        return torch.nn.functional.linear(hidden, weight).float()

    # ------------------------------------------------------------------ loading
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into our (partly fused) parameters; checks nothing is missing."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            target, offset = self._target(name)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in the model")
            param = params[target]
            with torch.no_grad():
                if offset is None:
                    if param.shape != tensor.shape:
                        raise ValueError(f"{name}: shape {tuple(tensor.shape)} != "
                                         f"{tuple(param.shape)}")
                    param.copy_(tensor)
                else:
                    param.narrow(0, offset, tensor.shape[0]).copy_(tensor)
            loaded.add(f"{target}@{offset}")
        expected = self._expected_keys(params)
        missing = expected - loaded
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")

    def _target(self, name: str) -> tuple[str, int | None]:
        """Map an HF name to (our parameter, row offset inside a fused one or None)."""
        attn = self.layers[0].self_attn if self.num_layers else None
        for part, offset in (
            ("q_proj", 0),
            ("k_proj", attn.q_size if attn else 0),
            ("v_proj", (attn.q_size + attn.kv_size) if attn else 0),
        ):
            if f".self_attn.{part}." in name:
                return name.replace(part, "qkv_proj"), offset
        if ".mlp.gate_proj." in name:
            return name.replace("gate_proj", "gate_up_proj"), 0
        if ".mlp.up_proj." in name:
            return name.replace("up_proj", "gate_up_proj"), self.config.intermediate_size
        return name, None

    def _expected_keys(self, params: dict[str, nn.Parameter]) -> set[str]:
        keys = set()
        attn = self.layers[0].self_attn if self.num_layers else None
        for name in params:
            if ".qkv_proj." in name:
                keys |= {f"{name}@0", f"{name}@{attn.q_size}",
                         f"{name}@{attn.q_size + attn.kv_size}"}
            elif ".gate_up_proj." in name:
                keys |= {f"{name}@0", f"{name}@{self.config.intermediate_size}"}
            else:
                keys.add(f"{name}@None")
        return keys
