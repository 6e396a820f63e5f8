"""Which slice of every sharded dimension one tensor-parallel rank owns (pure arithmetic).

Query heads, the MLP's intermediate dimension and the vocabulary are split evenly. KV heads are
split when there are at least as many as ranks; with fewer, each rank keeps the one KV head its
query heads read (heads are grouped contiguously: query head ``h`` reads KV head
``h // (num_heads / num_kv_heads)``), so a KV head is replicated on ``tp / num_kv_heads`` ranks.
The vocabulary is padded up to a multiple of ``tp``; padded rows are never looked up and their
logits are cut off after the gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ShardPlan:
    rank: int
    world_size: int
    num_heads: int  # whole model
    num_kv_heads: int  # whole model
    head_dim: int
    intermediate_size: int  # whole model
    vocab_size: int  # whole model

    def __post_init__(self) -> None:
        assert 0 <= self.rank < self.world_size, f"rank {self.rank} of {self.world_size}"
        check_shardable(self.world_size, self.num_heads, self.num_kv_heads,
                        self.intermediate_size)

    @classmethod
    def for_config(cls, config: Any, rank: int, world_size: int) -> ShardPlan:
        """The plan of an HF config (``head_dim`` defaults to hidden / heads, as the model's)."""
        head_dim = getattr(config, "head_dim", None) or \
            config.hidden_size // config.num_attention_heads
        return cls(rank, world_size, config.num_attention_heads, config.num_key_value_heads,
                   head_dim, config.intermediate_size, config.vocab_size)

    # ------------------------------------------------------------ attention heads
    @property
    def local_heads(self) -> int:
        return self.num_heads // self.world_size

    @property
    def head_start(self) -> int:
        return self.rank * self.local_heads

    @property
    def local_kv_heads(self) -> int:
        return max(1, self.num_kv_heads // self.world_size)

    @property
    def kv_head_start(self) -> int:
        """First KV head of this rank: its query heads' group (replicated when kv < tp)."""
        return self.rank * self.num_kv_heads // self.world_size

    # ------------------------------------------------------------ MLP and vocabulary
    @property
    def local_intermediate(self) -> int:
        return self.intermediate_size // self.world_size

    @property
    def vocab_per_rank(self) -> int:
        return -(-self.vocab_size // self.world_size)

    @property
    def vocab_start(self) -> int:
        return self.rank * self.vocab_per_rank


def check_shardable(world_size: int, num_heads: int, num_kv_heads: int,
                    intermediate_size: int) -> None:
    """``ValueError`` naming the first dimension that ``world_size`` ranks cannot split."""
    if world_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {world_size}")
    if num_heads % world_size:
        raise ValueError(f"tensor_parallel_size {world_size} must divide the "
                         f"{num_heads} attention heads")
    if num_kv_heads % world_size and world_size % num_kv_heads:
        raise ValueError(f"tensor_parallel_size {world_size} and the {num_kv_heads} KV heads "
                         "must divide one another")
    if intermediate_size % world_size:
        raise ValueError(f"tensor_parallel_size {world_size} must divide the intermediate "
                         f"size {intermediate_size}")
