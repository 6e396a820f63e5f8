"""Session retention in the KV cache: pins with leases, a pin budget, and a host-memory tier.

When a session's turn ends, its whole token path stays in the radix cache *pinned*: locked, so
nothing evicts it while the agent runs a tool. A pin carries a lease (renewed by every turn) and
a retention class (a turn that ended in a function call outranks one that did not). Pins never
block admission: a pin past its lease, or beyond the pin budget (a fraction of the pool, lowest
class and soonest expiry first), is *demoted* — its full pages are copied to host memory and the
lock is dropped, so the pages become evictable (after every page no session uses). When the
session's next request arrives, whatever of its path was evicted meanwhile is prefetched back
from host memory into fresh pages before its prefill is scheduled.

Pure bookkeeping (no torch): device copies leave as ``Backup`` / ``Prefetch`` ops that the model
runner executes at the start of the next step, before any KV write of that step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from engine.radix_cache import RadixCache, RadixNode

RETENTION_NORMAL = 1
RETENTION_TOOL_WAIT = 2  # the turn ended in a function call: the agent is running a tool


class SessionHint(msgspec.Struct):
    """Sent with a request: keep this session's path after the request finishes."""

    session_id: str
    lease_s: float = 600.0
    retention: int = RETENTION_NORMAL


@dataclass
class Pin:
    session_id: str
    namespace: str
    node: RadixNode | None  # locked while pinned; None once demoted
    token_ids: list[int]  # the tokens whose KV the path holds
    expires_at: float
    retention: int

    @property
    def pinned(self) -> bool:
        return self.node is not None


@dataclass
class HostCopy:
    session_id: str
    namespace: str
    token_ids: list[int]  # full pages only
    num_pages: int


@dataclass
class Backup:  # copy these device pages to the host tier under ``session_id``
    session_id: str
    page_ids: list[int]


@dataclass
class Prefetch:  # copy host pages ``host_indices`` of ``session_id`` into device ``page_ids``
    session_id: str
    host_indices: list[int]
    page_ids: list[int]


@dataclass
class SessionOps:
    backups: list[Backup] = field(default_factory=list)
    prefetches: list[Prefetch] = field(default_factory=list)
    host_drops: list[str] = field(default_factory=list)  # after the prefetches of the step

    @property
    def is_empty(self) -> bool:
        return not (self.backups or self.prefetches or self.host_drops)


@dataclass
class SessionStats:
    num_demotions: int = 0
    num_prefetches: int = 0
    num_prefetched_pages: int = 0
    num_expired: int = 0


class SessionPins:
    def __init__(self, cache: RadixCache, budget_pages: int, host_capacity_pages: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.page_size = cache.page_size
        self.budget_pages = budget_pages
        self.host_capacity_pages = host_capacity_pages
        self.clock = clock
        self.pins: dict[str, Pin] = {}
        self.host: OrderedDict[str, HostCopy] = OrderedDict()  # least recently used first
        self.stats = SessionStats()

    @property
    def num_pinned_pages(self) -> int:
        return sum(len(p.token_ids) // self.page_size for p in self.pins.values() if p.pinned)

    @property
    def num_host_pages(self) -> int:
        return sum(c.num_pages for c in self.host.values())

    # ------------------------------------------------------------------ pinning
    def pin(self, hint: SessionHint, namespace: str, token_ids: list[int],
            ops: SessionOps) -> None:
        """Pin the path of ``token_ids`` (already inserted in the cache) for ``hint``."""
        match = self.cache.match_prefix(token_ids, namespace)
        old = self.pins.pop(hint.session_id, None)
        self.cache.lock(match.lock_node)
        self.cache.add_session_ref(match.lock_node, +1)
        if old is not None:
            self._release(old)
        self._drop_host(hint.session_id, ops)
        self.pins[hint.session_id] = Pin(hint.session_id, namespace, match.lock_node,
                                         list(token_ids), self.clock() + hint.lease_s,
                                         hint.retention)

    def touch(self, session_id: str, lease_s: float | None, retention: int | None) -> None:
        pin = self.pins.get(session_id)
        if pin is None:
            return
        if lease_s is not None:
            pin.expires_at = self.clock() + lease_s
        if retention is not None:
            pin.retention = retention

    def close(self, session_id: str, ops: SessionOps) -> None:
        pin = self.pins.pop(session_id, None)
        if pin is not None:
            self._release(pin)
        self._drop_host(session_id, ops)

    def _release(self, pin: Pin) -> None:
        if pin.node is not None:
            self.cache.add_session_ref(pin.node, -1)
            self.cache.unlock(pin.node)
            pin.node = None

    def _drop_host(self, session_id: str, ops: SessionOps) -> None:
        if self.host.pop(session_id, None) is not None:
            ops.host_drops.append(session_id)

    # ------------------------------------------------------------- maintenance
    def maintain(self, ops: SessionOps) -> None:
        """Demote pins past their lease, then pins over the budget (lowest class first)."""
        now = self.clock()
        for pin in list(self.pins.values()):
            if pin.pinned and pin.expires_at <= now:
                self.stats.num_expired += 1
                self.demote(pin, ops)
        over = self.num_pinned_pages - self.budget_pages
        if over > 0:
            order = sorted((p for p in self.pins.values() if p.pinned),
                           key=lambda p: (p.retention, p.expires_at))
            for pin in order:
                if over <= 0:
                    break
                over -= len(pin.token_ids) // self.page_size
                self.demote(pin, ops)

    def demote_until(self, num_evictable: int, ops: SessionOps) -> None:
        """Demote pins, lowest class and soonest expiry first, until ``num_evictable`` pages
        are evictable (or no pin is left)."""
        order = sorted((p for p in self.pins.values() if p.pinned),
                       key=lambda p: (p.retention, p.expires_at))
        for pin in order:
            if self.cache.num_evictable_pages >= num_evictable:
                return
            self.demote(pin, ops)

    def demote(self, pin: Pin, ops: SessionOps) -> None:
        """Back the pin's full pages up to the host tier and drop its lock (not its refs)."""
        assert pin.node is not None, "demoting a pin twice"
        num_pages = len(pin.token_ids) // self.page_size
        match = self.cache.match_prefix(pin.token_ids[: num_pages * self.page_size],
                                        pin.namespace)
        assert len(match.pages) == num_pages, "a pinned path lost pages"
        self.cache.unlock(pin.node)  # the session ref stays: its pages go after plain ones
        pin.node = None
        self.stats.num_demotions += 1
        if num_pages == 0 or num_pages > self.host_capacity_pages:
            return
        while self.num_host_pages + num_pages > self.host_capacity_pages:
            oldest = next(iter(self.host))
            self._drop_host(oldest, ops)
        self.host[pin.session_id] = HostCopy(pin.session_id, pin.namespace,
                                             pin.token_ids[: num_pages * self.page_size],
                                             num_pages)
        ops.backups.append(Backup(pin.session_id, list(match.pages)))

    def host_copy_for(self, session_id: str, namespace: str,
                      token_ids: list[int]) -> HostCopy | None:
        """The host copy that prefixes ``token_ids``, if the session has one."""
        copy = self.host.get(session_id)
        if copy is None or copy.namespace != namespace:
            return None
        if token_ids[: len(copy.token_ids)] != copy.token_ids:
            return None
        self.host.move_to_end(session_id)
        return copy

    def check_integrity(self) -> None:
        for pin in self.pins.values():
            if pin.node is not None:
                assert pin.node.lock_ref > 0, f"pin {pin.session_id} holds an unlocked node"
        assert self.num_host_pages <= self.host_capacity_pages, "host tier over capacity"
