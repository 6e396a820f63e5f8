"""Tensor parallelism: SPMD engine ranks over ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

One process per device. Rank 0 is the engine (scheduler, sampling, the server's peer); ranks
1..N-1 build the same runner with their shard of the model and KV pool, then run each step rank
0 sends them. The model is the single-device definition, sharded from outside
(``shard.shard_model``): column-parallel q/k/v and gate/up, row-parallel o/down with one
all-reduce each, vocab-parallel embedding and LM head (logits all-gathered, so every rank holds
the full row; only rank 0 samples and its tokens reach the others as the next step's inputs).

| module | owns |
|---|---|
| ``plan`` | which heads / rows / vocabulary slice a rank owns (pure arithmetic) |
| ``group`` | the process groups and the collectives the model calls |
| ``layers`` | row-parallel linear, vocab-parallel embedding and logits |
| ``shard`` | rewriting a built model into a shard; slicing checkpoint tensors |
| ``channel`` | rank 0's per-step messages to the other ranks |
| ``launch`` | launcher environment, locally spawned workers and their watching |
| ``context`` | a rank's state: set-up, start-up agreement, step hand-off, shutdown |
| ``worker`` | the loop of ranks 1..N-1 |
"""

from engine.parallel.context import TensorParallel, setup_tensor_parallel
from engine.parallel.group import TensorParallelError, TPGroup
from engine.parallel.plan import ShardPlan, check_shardable

__all__ = ["ShardPlan", "TPGroup", "TensorParallel", "TensorParallelError", "check_shardable",
           "setup_tensor_parallel"]
