"""The layers that talk across ranks: row-parallel linear, vocab-parallel embedding and LM head.

Column-parallel layers (``qkv_proj``, ``gate_up_proj``) need no class of their own: they are
plain ``nn.Linear`` with this rank's output rows. Everything here keeps the parameter names of
the module it replaces (``weight``, ``bias``), so checkpoints load through the model's own
``load_weights``. Nothing here synchronises with the host: the collectives are captured by CUDA
graphs like any other kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.parallel.group import TPGroup
from kernels import ops


class RowParallelLinear(nn.Linear):
    """``y = sum over ranks(x_r @ W_r^T) + b``: this rank holds input columns ``W_r`` of the
    weight; the partial products are all-reduced, then the (replicated) bias is added once."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: TPGroup,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.group = group

    def forward(self, x: torch.Tensor, silu_mul: bool = False) -> torch.Tensor:
        """(n, in_local) -> (n, out); ``silu_mul``: x is (n, 2 * in_local) ``[gate | up]``."""
        out = self.group.all_reduce(ops.linear(x, self.weight, silu_mul=silu_mul))
        return out if self.bias is None else out + self.bias

    def forward_silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.forward(gate_up, silu_mul=True)


class VocabParallelEmbedding(nn.Module):
    """Rows ``[vocab_start, vocab_start + num_local)`` of the embedding table on this rank;
    ids outside them embed to zeros and the all-reduce fills in the owning rank's row."""

    def __init__(self, num_local: int, dim: int, vocab_start: int, group: TPGroup,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_local, dim, dtype=dtype, device=device),
                                   requires_grad=False)
        self.num_local = num_local
        self.vocab_start = vocab_start
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, dim)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_local)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0)
        return self.group.all_reduce(out)


class VocabParallelLogits:
    """Stands in for the model's ``compute_logits``: each rank computes the logits of its own
    vocabulary rows (each one a whole dot product, so exactly what one device computes), and
    an all-gather gives every rank the full (n, vocab_size) float32 row."""

    def __init__(self, model: nn.Module, group: TPGroup, vocab_size: int) -> None:
        self.model = model
        self.group = group
        self.vocab_size = vocab_size

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:  # (n, hidden) -> (n, vocab)
        model = self.model
        weight = model.embed_tokens.weight if model.tie_word_embeddings else model.lm_head.weight
        local = F.linear(hidden, weight).float()  # (n, vocab_per_rank)
        n, per_rank = local.shape
        gathered = self.group.all_gather(local)  # (world_size * n, vocab_per_rank)
        logits = gathered.view(self.group.world_size, n, per_rank).transpose(0, 1)
        logits = logits.reshape(n, self.group.world_size * per_rank)
        if logits.shape[1] != self.vocab_size:  # padded vocabulary: drop the padding
            logits = logits[:, : self.vocab_size].contiguous()
        return logits
