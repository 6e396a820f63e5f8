"""The host-memory tier: session KV pages copied out of the device pool and back, bit-exact.

On CUDA the copies land in pinned host memory; on CPU the tier is a second set of tensors, so
the same bookkeeping (and its tests) run everywhere. It executes the scheduler's ``SessionOps``
at the start of a step: backups read pages before anything of that step may reuse them,
prefetches write pages before the forward reads them. Each prefetch's latency (host clock, the
host-to-device copies included) is observed into cumulative histogram buckets for ``/metrics``.
"""

from __future__ import annotations

import logging
import time

import torch

from engine.ipc import PREFETCH_SECONDS_BUCKETS
from engine.session_pins import SessionOps
from kernels.kv_cache import KVCache

logger = logging.getLogger(__name__)


class HostTier:
    def __init__(self, kv_cache: KVCache) -> None:
        self.kv_cache = kv_cache
        self.pin_memory = kv_cache.device.type == "cuda"
        # session id -> (k, v), each (num_layers, num_pages, page_size, kv_heads, head_dim)
        self.copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_prefetch_s = 0.0
        self.total_prefetch_s = 0.0
        # (len(PREFETCH_SECONDS_BUCKETS) + 1,) cumulative: prefetches that took <= each bound,
        # then all of them (+Inf)
        self.prefetch_buckets = [0] * (len(PREFETCH_SECONDS_BUCKETS) + 1)

    @property
    def num_pages(self) -> int:
        return sum(k.shape[1] for k, _ in self.copies.values())

    def execute(self, ops: SessionOps) -> None:
        for backup in ops.backups:
            ids = torch.tensor(backup.page_ids, dtype=torch.int64, device=self.kv_cache.device)
            k_pages, v_pages = self.kv_cache.read_pages(ids)
            self.copies[backup.session_id] = (self._to_host(torch.stack(k_pages)),
                                              self._to_host(torch.stack(v_pages)))
        for prefetch in ops.prefetches:
            start = time.perf_counter()
            k, v = self.copies[prefetch.session_id]
            rows = torch.tensor(prefetch.host_indices, dtype=torch.int64)
            dst = torch.tensor(prefetch.page_ids, dtype=torch.int64, device=self.kv_cache.device)
            self.kv_cache.write_pages(dst, list(k.index_select(1, rows).unbind(0)),
                                      list(v.index_select(1, rows).unbind(0)))
            self.observe_prefetch(time.perf_counter() - start)
        for session_id in ops.host_drops:
            self.copies.pop(session_id, None)

    def observe_prefetch(self, seconds: float) -> None:
        self.last_prefetch_s = seconds
        self.total_prefetch_s += seconds
        for i, bound in enumerate(PREFETCH_SECONDS_BUCKETS):
            if seconds <= bound:
                self.prefetch_buckets[i] += 1
        self.prefetch_buckets[-1] += 1

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.pin_memory:
            return tensor  # index_select + stack already made a private copy
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=False)
        return host
