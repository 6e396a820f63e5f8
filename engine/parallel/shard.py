"""Apply tensor parallelism to the single-device model from outside (the model file stays as is).

``shard_model`` rewrites a built ``LlamaForCausalLM`` into this rank's shard: ``qkv_proj`` and
``gate_up_proj`` become column-parallel (their q | k | v and gate | up row blocks each sliced
separately, so the fused layout survives), ``o_proj`` and ``down_proj`` row-parallel with an
all-reduce, the embedding vocab-parallel, and the LM head vocab-parallel with an all-gather of
the logits. Head counts and sizes the forward reads become this rank's.

``build_sharded`` is how the loader uses it: build the model on the meta device (no memory),
shard it, then allocate only the shard on the target device. A 64 GB model is never
materialised whole; checkpoint tensors are sliced by ``shard_tensors`` on their way into the
model's own ``load_weights``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from engine.models.layers import RotaryEmbedding, rope_parameters
from engine.parallel.group import TPGroup
from engine.parallel.layers import RowParallelLinear, VocabParallelEmbedding, VocabParallelLogits
from engine.parallel.plan import ShardPlan


def _column(old: nn.Linear, out_features: int) -> nn.Linear:
    w = old.weight
    return type(old)(old.in_features, out_features, bias=old.bias is not None, dtype=w.dtype,
                     device=w.device)


def _row(old: nn.Linear, in_features: int, group: TPGroup) -> RowParallelLinear:
    w = old.weight
    return RowParallelLinear(in_features, old.out_features, old.bias is not None, group,
                             dtype=w.dtype, device=w.device)


def shard_model(model: nn.Module, plan: ShardPlan, group: TPGroup) -> nn.Module:
    """Rewrite ``model`` in place into rank ``plan.rank``'s shard and return it. The replaced
    layers have fresh, unfilled parameters: load (or initialise) the weights afterwards."""
    assert plan.world_size == group.world_size and plan.rank == group.rank, "plan/group mismatch"
    for layer in model.layers:
        attn = layer.self_attn
        attn.num_heads, attn.num_kv_heads = plan.local_heads, plan.local_kv_heads
        attn.q_size = plan.local_heads * plan.head_dim
        attn.kv_size = plan.local_kv_heads * plan.head_dim
        attn.qkv_proj = _column(attn.qkv_proj, attn.q_size + 2 * attn.kv_size)
        attn.o_proj = _row(attn.o_proj, attn.q_size, group)
        mlp = layer.mlp
        mlp.intermediate_size = plan.local_intermediate
        mlp.gate_up_proj = _column(mlp.gate_up_proj, 2 * plan.local_intermediate)
        mlp.down_proj = _row(mlp.down_proj, plan.local_intermediate, group)
    embed = model.embed_tokens.weight
    model.embed_tokens = VocabParallelEmbedding(plan.vocab_per_rank, embed.shape[1],
                                                plan.vocab_start, group, embed.dtype,
                                                embed.device)
    if not model.tie_word_embeddings:
        model.lm_head = _column(model.lm_head, plan.vocab_per_rank)
    # What the runner sizes the KV cache and the attention backend by, and what the loader
    # computes fused-slice offsets from: this rank's numbers. vocab_size stays whole (the
    # logits are gathered).
    model.num_heads, model.num_kv_heads = plan.local_heads, plan.local_kv_heads
    model.intermediate_size = plan.local_intermediate
    model.compute_logits = VocabParallelLogits(model, group, plan.vocab_size)
    model.tp_plan = plan
    return model


def build_sharded(cls: type[nn.Module], config: Any, dtype: torch.dtype, device: torch.device,
                  plan: ShardPlan, group: TPGroup) -> nn.Module:
    """``cls(config)`` sharded for ``plan``, allocated on ``device``, weights left to fill."""
    with torch.device("meta"):
        model = cls(config, dtype=dtype)
    shard_model(model, plan, group)
    model.to_empty(device=device)
    # Buffers computed at construction came out of ``to_empty`` uninitialised: the only ones
    # are the rotary tables (one module shared by every layer); rebuild it on the device.
    with torch.device(device):
        rotary = RotaryEmbedding(plan.head_dim, model.layers[0].self_attn.rotary.max_positions,
                                 rope_parameters(config))
    for layer in model.layers:
        layer.self_attn.rotary = rotary
    stale = [n for n, _ in model.named_buffers() if ".rotary." not in n]
    assert not stale, f"buffers {stale} need rebuilding after a meta-device build"
    return model


# HF parameter-name suffix -> (dimension sliced, which partition). Unlisted tensors (norms,
# q/k norms, row-parallel biases) are replicated whole.
_SLICES: dict[str, tuple[int, str]] = {
    "self_attn.q_proj.weight": (0, "heads"), "self_attn.q_proj.bias": (0, "heads"),
    "self_attn.k_proj.weight": (0, "kv_heads"), "self_attn.k_proj.bias": (0, "kv_heads"),
    "self_attn.v_proj.weight": (0, "kv_heads"), "self_attn.v_proj.bias": (0, "kv_heads"),
    "self_attn.o_proj.weight": (1, "heads"),
    "mlp.gate_proj.weight": (0, "intermediate"), "mlp.gate_proj.bias": (0, "intermediate"),
    "mlp.up_proj.weight": (0, "intermediate"), "mlp.up_proj.bias": (0, "intermediate"),
    "mlp.down_proj.weight": (1, "intermediate"),
    "embed_tokens.weight": (0, "vocab"), "lm_head.weight": (0, "vocab"),
}


def _range(plan: ShardPlan, part: str) -> tuple[int, int]:
    """(start, length) of this rank's slice of a ``part`` dimension, in elements."""
    hd = plan.head_dim
    if part == "heads":
        return plan.head_start * hd, plan.local_heads * hd
    if part == "kv_heads":
        return plan.kv_head_start * hd, plan.local_kv_heads * hd
    if part == "intermediate":
        return plan.rank * plan.local_intermediate, plan.local_intermediate
    assert part == "vocab", part
    return plan.vocab_start, plan.vocab_per_rank


def shard_tensor(name: str, tensor: torch.Tensor, plan: ShardPlan) -> torch.Tensor:
    """This rank's part of the HF checkpoint tensor ``name`` (vocab shards zero-padded)."""
    rule = next((r for suffix, r in _SLICES.items() if name.endswith(suffix)), None)
    if rule is None:
        return tensor
    dim, part = rule
    start, length = _range(plan, part)
    available = max(0, min(length, tensor.shape[dim] - start))
    piece = tensor.narrow(dim, start, available) if available else tensor.narrow(dim, 0, 0)
    if available == length:
        return piece
    pad_shape = list(tensor.shape)
    pad_shape[dim] = length - available
    return torch.cat([piece, tensor.new_zeros(pad_shape)], dim=dim)


def shard_tensors(weights: Iterable[tuple[str, torch.Tensor]],
                  plan: ShardPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of a checkpoint, each cut to this rank's part."""
    for name, tensor in weights:
        yield name, shard_tensor(name, tensor, plan)
