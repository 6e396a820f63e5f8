"""Attention backend contract: plan once per batch, run once per layer.

A batch is a flat list of tokens from several sequences. Sequence ``i`` brings ``q_lens[i]`` new
tokens whose positions are ``kv_lens[i] - q_lens[i] ... kv_lens[i] - 1``; its keys and values for
all ``kv_lens[i]`` positions live in the paged KV cache at the pages ``page_table[i]`` (page ``p``
covers slots ``p * page_size ... p * page_size + page_size - 1``). New keys and values are written
to ``slot_mapping`` before attending, so a sequence attends to its cached prefix plus its own new
tokens causally.

Ownership: the backend owns no KV memory; the ``KVCache`` passed at construction does. ``plan``
may allocate small per-batch index tensors; ``forward`` must not synchronise with the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from kernels.kv_cache import KVCache


@dataclass
class AttentionBatch:
    """What every backend needs to plan one forward pass.

    Host-side lists are the scheduler's view; ``slot_mapping`` is already on the device.
    """

    q_lens: list[int]  # (num_seqs,) new tokens per sequence
    kv_lens: list[int]  # (num_seqs,) total context per sequence, new tokens included
    page_table: list[list[int]]  # (num_seqs, >= ceil(kv_len / page_size)) page ids
    slot_mapping: torch.Tensor  # (num_tokens,) int64, cache slot of each new token

    def __post_init__(self) -> None:
        assert len(self.q_lens) == len(self.kv_lens) == len(self.page_table), "ragged batch"
        assert sum(self.q_lens) == self.slot_mapping.numel(), "slot_mapping must cover new tokens"

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.numel()


class AttentionBackend(ABC):
    """Paged attention over a ``KVCache``; one instance serves every layer of a model."""

    def __init__(self, kv_cache: KVCache, num_q_heads: int, scale: float) -> None:
        self.kv_cache = kv_cache
        self.num_q_heads = num_q_heads  # heads on this rank
        self.scale = scale

    @staticmethod
    def available() -> bool:
        """Whether this backend can run in this process (its packages and devices are here)."""
        return True

    @abstractmethod
    def plan(self, batch: AttentionBatch) -> None:
        """Prepare index/metadata for ``batch``; called once before the layers run."""

    @abstractmethod
    def forward(
        self,
        layer_id: int,
        q: torch.Tensor,  # (num_tokens, num_q_heads, head_dim)
        k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
        v: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    ) -> torch.Tensor:  # (num_tokens, num_q_heads, head_dim)
        """Store ``k``/``v`` at the planned slots of ``layer_id`` and attend causally."""
