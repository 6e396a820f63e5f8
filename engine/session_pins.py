"""Session retention in the KV cache: pins with leases, a pin budget, and a host-memory tier.

``SessionKV`` is the engine's whole interface to sessions' KV (match / lock / unlock handles on
the radix cache, pin with a lease, unpin, demote, prefetch); ``SessionPins`` implements it.

When a session's turn ends, its whole token path stays in the radix cache *pinned*: locked, so
nothing evicts it while the agent runs a tool. A pin carries a lease (renewed by every turn) and
a retention class (a turn that ended in a function call outranks one that did not). Pins never
block admission: a pin beyond the pin budget (a fraction of the pool, lowest class and soonest
expiry first), or needed to make room, is *demoted* — its full pages are copied to host memory and
the lock is dropped, so the pages become evictable, after every page no live session uses. A pin
past its lease is demoted the same way and then forgotten (the session is no longer live; its
pages rank with those of deleted sessions). When the session's next request arrives, whatever of
its path was evicted meanwhile is prefetched back from host memory before its prefill.

Pure bookkeeping (no torch): device copies leave as ``Backup`` / ``Prefetch`` ops that the model
runner executes at the start of the next step, before any KV write of that step.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from engine.radix_cache import RANK_IDLE, RANK_PINNED, CacheRef, PrefixMatch, RadixCache, RadixNode

RETENTION_NORMAL = 1
RETENTION_TOOL_WAIT = 2  # the turn ended in a function call: the agent is running a tool


class SessionHint(msgspec.Struct):
    """Sent with a request: keep this session's path after the request finishes."""

    session_id: str
    lease_s: float = 600.0
    retention: int = RETENTION_NORMAL


@dataclass
class Pin:
    """A live session's hold on its path: lease running, not deleted."""

    session_id: str
    namespace: str
    ref: CacheRef  # its path in the cache; rank PINNED (pinned or demoted to make room) or IDLE
    token_ids: list[int]  # the tokens whose KV the path holds
    expires_at: float
    retention: int
    pinned: bool  # ``ref.node`` is locked: nothing of the path can be evicted


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
class SessionStats:  # cumulative
    num_demotions: int = 0
    num_prefetches: int = 0
    num_prefetched_pages: int = 0
    num_expired: int = 0  # leases that ran out
    num_closed: int = 0  # sessions deleted while live


class SessionKV(ABC):
    """What the engine may do with sessions' KV; the scheduler calls nothing else about sessions.

    Ownership: cached pages belong to the radix cache. A *handle* is the ``lock_node`` of a
    ``match``; whoever ``lock``s it must ``unlock`` it exactly once, and a locked path is never
    evicted. Pins are owned here: ``pin`` locks a session's path, ``demote`` unlocks it (after
    backing it up), ``unpin`` forgets it. Device copies leave as ``SessionOps`` appended to the
    ``ops`` passed in; the caller executes them before the next forward (backups, then
    prefetches, then host drops). Single-threaded: called between steps only.
    """

    @abstractmethod
    def match(self, token_ids: list[int], namespace: str) -> PrefixMatch:
        """The longest cached prefix of ``token_ids``; ``lock_node`` is its handle."""

    @abstractmethod
    def lock(self, handle: RadixNode) -> None:
        """Keep the handle's path (and partial page) from eviction until ``unlock``."""

    @abstractmethod
    def unlock(self, handle: RadixNode) -> None:
        ...

    @abstractmethod
    def pin(self, hint: SessionHint, namespace: str, token_ids: list[int],
            ops: SessionOps) -> None:
        """Pin the path of ``token_ids`` (already cached) for ``hint.session_id`` with a lease of
        ``hint.lease_s`` from now, replacing the session's previous pin and host copy."""

    @abstractmethod
    def renew(self, session_id: str, lease_s: float | None = None,
              retention: int | None = None) -> None:
        """The lease half of a pin: restart the lease (``lease_s`` from now) and/or set the
        retention class of the session's pin; nothing if it has none."""

    @abstractmethod
    def unpin(self, session_id: str, ops: SessionOps) -> None:
        """The session is deleted: unlock and forget its pin, drop its host copy."""

    @abstractmethod
    def demote(self, ops: SessionOps, num_evictable: int = 0) -> None:
        """Demote pins past their lease (and forget them), then pins over the budget; then, with
        ``num_evictable``, more pins (lowest class, soonest expiry first) until that many cache
        pages are evictable or no pin is left. Call once per step (``num_evictable`` = 0)."""

    @abstractmethod
    def prefetch(self, session_id: str, namespace: str, token_ids: list[int],
                 allocate: Callable[[int], list[int] | None], ops: SessionOps) -> int:
        """Before a request of the session with prompt ``token_ids`` is matched: bring back
        from the host tier what the cache lost of its path, into pages from ``allocate`` (None:
        no room, nothing is brought back). Returns the number of pages prefetched."""

    def check_integrity(self) -> None:  # noqa: B027 - optional, for tests
        """Assert internal invariants."""


class SessionPins(SessionKV):
    def __init__(self, cache: RadixCache, budget_pages: int, host_capacity_pages: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.page_size = cache.page_size
        self.budget_pages = budget_pages
        self.host_capacity_pages = host_capacity_pages
        self.clock = clock
        self.pins: dict[str, Pin] = {}  # live sessions only
        self.host: OrderedDict[str, HostCopy] = OrderedDict()  # least recently used first
        self.stats = SessionStats()

    @property
    def num_live_sessions(self) -> int:
        return len(self.pins)

    @property
    def num_host_sessions(self) -> int:
        return len(self.host)

    @property
    def num_pinned_pages(self) -> int:
        return sum(len(p.token_ids) // self.page_size for p in self.pins.values() if p.pinned)

    @property
    def num_host_pages(self) -> int:
        return sum(c.num_pages for c in self.host.values())

    # --------------------------------------------------------------- handles
    def match(self, token_ids: list[int], namespace: str) -> PrefixMatch:
        return self.cache.match_prefix(token_ids, namespace)

    def lock(self, handle: RadixNode) -> None:
        self.cache.lock(handle)

    def unlock(self, handle: RadixNode) -> None:
        self.cache.unlock(handle)

    # ------------------------------------------------------------------ pinning
    def pin(self, hint: SessionHint, namespace: str, token_ids: list[int],
            ops: SessionOps) -> None:
        handle = self.cache.match_prefix(token_ids, namespace).lock_node
        new = None
        if handle.parent is not None:  # a root: not a page of it is cached, nothing to keep
            self.cache.lock(handle)  # before the old pin lets go: shared pages stay locked
            new = Pin(hint.session_id, namespace, self.cache.add_ref(handle, RANK_PINNED),
                      list(token_ids), self.clock() + hint.lease_s, hint.retention, True)
        old = self.pins.pop(hint.session_id, None)
        if old is not None:
            self._forget(old)
        self._drop_host(hint.session_id, ops)
        if new is not None:
            self.pins[hint.session_id] = new

    def renew(self, session_id: str, lease_s: float | None = None,
              retention: int | None = None) -> None:
        pin = self.pins.get(session_id)
        if pin is None:
            return
        if lease_s is not None:
            pin.expires_at = self.clock() + lease_s
        if retention is not None:
            pin.retention = retention

    def unpin(self, session_id: str, ops: SessionOps) -> None:
        pin = self.pins.pop(session_id, None)
        if pin is not None:
            self.stats.num_closed += 1
            self._forget(pin)
        self._drop_host(session_id, ops)

    def _forget(self, pin: Pin) -> None:
        """Unlock the pin's path (if pinned) and drop its ref: the path ranks as retired."""
        if pin.pinned:
            self.cache.unlock(pin.ref.node)
            pin.pinned = False
        self.cache.drop_ref(pin.ref)

    def _drop_host(self, session_id: str, ops: SessionOps) -> None:
        if self.host.pop(session_id, None) is not None:
            ops.host_drops.append(session_id)

    # ---------------------------------------------------------------- demotion
    def demote(self, ops: SessionOps, num_evictable: int = 0) -> None:
        now = self.clock()
        for pin in [p for p in self.pins.values() if p.expires_at <= now]:
            self.stats.num_expired += 1
            if pin.pinned:
                self._demote(pin, RANK_IDLE, ops)
            del self.pins[pin.session_id]
            self._forget(pin)  # the host copy stays: the session may still come back
        over = self.num_pinned_pages - self.budget_pages
        for pin in self._demotion_order():
            if over <= 0:
                break
            over -= len(pin.token_ids) // self.page_size
            self._demote(pin, RANK_IDLE, ops)
        for pin in self._demotion_order():
            if self.cache.num_evictable_pages >= num_evictable:
                break
            self._demote(pin, RANK_PINNED, ops)  # only for room: its pages still go last
        # A demoted pin with nothing left on the device or the host retains nothing.
        for pin in list(self.pins.values()):
            if pin.ref.node is None and not pin.pinned and pin.session_id not in self.host:
                del self.pins[pin.session_id]

    def _demotion_order(self) -> list[Pin]:
        return sorted((p for p in self.pins.values() if p.pinned),
                      key=lambda p: (p.retention, p.expires_at))

    def _demote(self, pin: Pin, rank: int, ops: SessionOps) -> None:
        """Back the pin's full pages up to the host tier and unlock them; its ref takes ``rank``."""
        assert pin.pinned, f"demoting {pin.session_id} twice"
        num_pages = len(pin.token_ids) // self.page_size
        match = self.cache.match_prefix(pin.token_ids[: num_pages * self.page_size],
                                        pin.namespace)
        assert len(match.pages) == num_pages, "a pinned path lost pages"
        self.cache.unlock(pin.ref.node)
        self.cache.set_rank(pin.ref, rank)
        pin.pinned = False
        self.stats.num_demotions += 1
        if num_pages == 0 or num_pages > self.host_capacity_pages:
            return
        self._drop_host(pin.session_id, ops)
        while self.num_host_pages + num_pages > self.host_capacity_pages:
            self._drop_host(next(iter(self.host)), ops)
        self.host[pin.session_id] = HostCopy(pin.session_id, pin.namespace,
                                             pin.token_ids[: num_pages * self.page_size],
                                             num_pages)
        ops.backups.append(Backup(pin.session_id, list(match.pages)))

    # ---------------------------------------------------------------- prefetch
    def prefetch(self, session_id: str, namespace: str, token_ids: list[int],
                 allocate: Callable[[int], list[int] | None], ops: SessionOps) -> int:
        copy = self.host.get(session_id)
        if (copy is None or copy.namespace != namespace
                or token_ids[: len(copy.token_ids)] != copy.token_ids):
            return 0
        self.host.move_to_end(session_id)  # keep it while ``allocate`` makes room
        ps = self.page_size
        match = self.cache.match_prefix(copy.token_ids, namespace)
        have = len(match.pages)
        need = copy.num_pages - have
        pages = None
        if need > 0:
            self.cache.lock(match.lock_node)  # our allocation must not evict what we extend
            pages = allocate(need)
            if pages is not None:
                ops.prefetches.append(Prefetch(session_id, list(range(have, copy.num_pages)),
                                               pages))
                to_free = self.cache.insert(copy.token_ids, match.pages + pages, namespace)
                assert not to_free, "prefetched pages duplicated cached ones"
                self.stats.num_prefetches += 1
                self.stats.num_prefetched_pages += need
            self.cache.unlock(match.lock_node)
        pin = self.pins.get(session_id)
        if pin is not None and not pin.pinned and pages is not None:
            # Its ref climbed up as the path was evicted: put it back at the end of the path.
            rank = pin.ref.rank
            self.cache.drop_ref(pin.ref)
            end = self.cache.match_prefix(copy.token_ids[: copy.num_pages * ps], namespace)
            pin.ref = self.cache.add_ref(end.node, rank)
        self._drop_host(session_id, ops)
        return need if pages is not None else 0

    def check_integrity(self) -> None:
        for pin in self.pins.values():
            assert pin.ref.rank in (RANK_IDLE, RANK_PINNED), f"pin {pin.session_id}: bad rank"
            if pin.pinned:
                assert pin.ref.node is not None and pin.ref.node.lock_ref > 0, (
                    f"pin {pin.session_id} holds an unlocked node")
                assert pin.ref.rank == RANK_PINNED, f"pin {pin.session_id} pinned but not ranked"
        assert self.num_host_pages <= self.host_capacity_pages, "host tier over capacity"
