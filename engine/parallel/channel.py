"""Rank 0 tells the other ranks what to run: one small msgpack message per step, over gloo.

Rank 0 schedules; every other rank only mirrors its device work. Per step it broadcasts
``RunStep`` (the ``StepBatch``: token ids, positions, slots, page table), and, on steps whose
scheduler output moves session KV, ``RunSessionOps`` first (KV pools are per rank, so every rank
copies its own shard of those pages). ``StopWorker`` ends the worker loops. A message travels as
two gloo broadcasts from rank 0: its length (one int64), then its bytes.
"""

from __future__ import annotations

import msgspec
import torch

from engine.host_tier import HostTier
from engine.parallel.group import TPGroup
from engine.session_pins import SessionOps
from engine.step_batch import StepBatch
from kernels.kv_cache import KVCache


class RunStep(msgspec.Struct, tag="step", array_like=True):
    batch: StepBatch


class RunSessionOps(msgspec.Struct, tag="ops", array_like=True):
    ops: SessionOps


class StopWorker(msgspec.Struct, tag="stop", array_like=True):
    pass


WorkerMessage = RunStep | RunSessionOps | StopWorker


class StepChannel:
    """Broadcast ``WorkerMessage``s from rank 0 to all ranks of ``group`` (its gloo group).

    Every rank must take part in every message, in order: rank 0 ``send``s, the others
    ``recv``. Not thread-safe (one engine loop per rank).
    """

    def __init__(self, group: TPGroup) -> None:
        self.group = group
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(WorkerMessage)
        self._length = torch.zeros(1, dtype=torch.int64)

    def send(self, message: WorkerMessage) -> None:
        assert self.group.rank == 0, "only rank 0 sends step messages"
        payload = bytearray(self._encoder.encode(message))
        self._length[0] = len(payload)
        self.group.broadcast_cpu(self._length)
        self.group.broadcast_cpu(torch.frombuffer(payload, dtype=torch.uint8))

    def recv(self) -> WorkerMessage:
        """Block until rank 0's next message (for as long as rank 0 stays idle)."""
        assert self.group.rank != 0, "rank 0 never receives step messages"
        self.group.broadcast_cpu(self._length)
        payload = torch.empty(int(self._length[0]), dtype=torch.uint8)
        self.group.broadcast_cpu(payload)
        return self._decoder.decode(payload.numpy().tobytes())


class BroadcastHostTier(HostTier):
    """Rank 0's host tier: session KV moves are sent to the other ranks, then done locally."""

    def __init__(self, kv_cache: KVCache, channel: StepChannel) -> None:
        super().__init__(kv_cache)
        self.channel = channel

    def execute(self, ops: SessionOps) -> None:
        if ops.backups or ops.prefetches or ops.host_drops:
            self.channel.send(RunSessionOps(ops))
        super().execute(ops)
