"""Self-speculation: draft with the target's own first layers, its final norm and its LM head.

An early exit of the target (the LayerSkip idea, without its training): the hidden state after
``L`` of the ``N`` decoder layers goes straight through the final RMSNorm and the LM head.
It needs no weights of its own, so every checkpoint has it, which makes it the proof of the
draft-model interface (``engine.spec.draft_model``) more than a fast drafter: on an untrained
model the early exit agrees with the full model on easy tokens (copies, closing brackets) and
costs ``L / N`` of a target forward per drafted token. ``L = N`` drafts what the target would
pick (up to rounding), which the tests use to check the draft's incremental KV.

Weights are shared with the runner's model, never copied; the draft's KV is its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.spec.base import DraftContext, register_drafter
from engine.spec.draft_model import DraftAttention, DraftModelDrafter

if TYPE_CHECKING:
    from engine.models import LlamaForCausalLM


@register_drafter("self")
class SelfSpecDrafter(DraftModelDrafter):
    def __init__(self, max_draft_len: int, context: DraftContext) -> None:
        model: LlamaForCausalLM = context.model
        num_layers = context.num_draft_layers or max(1, model.num_layers // 2)
        if not 1 <= num_layers <= model.num_layers:
            raise ValueError(f"self-speculation runs 1 to {model.num_layers} layers of this "
                             f"model, got {num_layers}")
        weight = model.embed_tokens.weight
        super().__init__(max_draft_len, num_layers=num_layers, num_kv_heads=model.num_kv_heads,
                         head_dim=model.head_dim, scale=model.head_dim**-0.5, dtype=weight.dtype,
                         device=weight.device)
        self.model = model
        self.num_layers = num_layers

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: DraftAttention) -> torch.Tensor:
        model = self.model
        x, residual = model.embed_tokens(input_ids), None
        for layer in model.layers[: self.num_layers]:
            x, residual = layer(positions, x, residual, attn)
        x, _ = model.norm(x[-1:], residual[-1:])  # only the last position drafts
        return model.compute_logits(x)[0]
