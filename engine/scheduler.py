"""Continuous batching with chunked prefill, prefix reuse and preemption (pure Python, no torch).

Each step: running requests first (decodes and unfinished prefill chunks, in admission order),
then waiting requests in arrival order, all under one token budget. With
``prefill_first_tokens``, a step that admits only short, whole prompts (an agent's tool result)
runs them without the decode rows, which sit that one step out: the new turn's first token
does not wait for their attention over long contexts (bounded: ``engine.prefill_first``).

A request that needs a page when none is free evicts unlocked cache pages; if that is not
enough, the most recently admitted running request is preempted: its computed KV goes into the
radix cache (where it usually survives to be matched again) and it returns to the head of the
queue.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.page_pool import PagePool
from engine.prefill_first import PrefillFirst
from engine.radix_cache import RadixCache
from engine.request import FinishReason, Request, RequestStatus
from engine.session_pins import SessionKV, SessionOps, SessionPins

logger = logging.getLogger(__name__)


@dataclass
class ScheduledRequest:
    request: Request
    start: int  # tokens already computed; this step computes positions start .. start + n - 1
    num_new_tokens: int
    sample: bool  # the step reaches the last known token, so the runner samples the next one
    # Speculative decoding: guesses for the tokens after the last known one, computed at
    # positions start + 1 .. start + len(draft_ids) (num_new_tokens counts them) and verified by
    # the runner, which then returns 1 .. 1 + len(draft_ids) tokens.
    draft_ids: list[int] = field(default_factory=list)
    # Overlap scheduling: the step's one input token is the one the previous step samples for
    # this request, still on the device: row ``prev_row`` of that step's sampled tokens.
    prev_row: int | None = None


@dataclass
class SchedulerOutput:
    requests: list[ScheduledRequest] = field(default_factory=list)
    # Partial-page reuse to perform before the forward: copy the first n slots of src to dst.
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # (src_page, dst_page, n)
    # Host-tier traffic, executed first: backups (read), prefetches (write), then drops.
    session_ops: SessionOps = field(default_factory=SessionOps)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.requests)

    @property
    def is_empty(self) -> bool:
        return not self.requests


@dataclass
class SchedulerStats:
    num_computed_tokens: int = 0  # tokens run through the model (prefill + decode)
    num_cached_tokens: int = 0  # tokens taken from the prefix cache at admission
    num_preemptions: int = 0
    num_evicted_pages: int = 0
    num_prefill_first_steps: int = 0  # steps whose decode rows sat out (prefill_first_tokens)
    num_prefill_first_capped: int = 0  # ... would have, but their share was spent: ran mixed


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.pool = PagePool(config.num_pages, config.page_size)
        self.cache = RadixCache(config.page_size)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        # Sessions' KV only through this interface (and prefix matching through its handles).
        self.sessions: SessionKV = SessionPins(self.cache, config.pin_budget_pages,
                                               config.host_tier_pages)
        self._pending_ops = SessionOps()  # from pins set between steps
        self._step_ops = SessionOps()
        self.prefill_first = PrefillFirst(config, self.stats)

    # ---------------------------------------------------------------- sessions
    def touch_session(self, session_id: str, lease_s: float | None = None,
                      retention: int | None = None) -> None:
        self.sessions.renew(session_id, lease_s, retention)

    def close_session(self, session_id: str) -> None:
        self.sessions.unpin(session_id, self._pending_ops)

    @property
    def max_request_len(self) -> int:
        """Longest prompt + output one request may reach: the context window or the pool."""
        return min(self.config.max_model_len, self.pool.num_total * self.config.page_size)

    def add(self, request: Request) -> None:
        assert request.num_prompt_tokens < self.max_request_len, "caller validates prompt length"
        request.max_len = min(request.max_len, self.max_request_len)
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Request | None:
        for queue in (self.waiting, self.running):
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    self._release(request)
                    request.status = RequestStatus.FINISHED
                    request.finish_reason = FinishReason.ABORT
                    return request
        return None

    # ---------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(session_ops=self._pending_ops)
        self._pending_ops = SessionOps()
        self._step_ops = out.session_ops  # pins demoted under pressure back up in this step
        if self.config.enable_prefix_caching:
            self.sessions.demote(out.session_ops)  # leases and the pin budget
        budget = self.config.max_num_batched_tokens
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            assert num_new > 0, f"running request with nothing to compute: {request}"
            drafts = self._take_drafts(request, budget)
            if drafts and not self._reserve(request, request.num_computed_tokens + 1 + len(drafts)):
                drafts = []  # drafts are optional: drop them before preempting anyone
            num_new += len(drafts)
            if not self._reserve(request, request.num_computed_tokens + num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
                continue
            out.requests.append(self._scheduled(request, num_new, drafts))
            budget -= num_new
            i += 1
        num_running = len(out.requests)
        # Admitting while preempting would only thrash: the freed pages go to running requests.
        while not preempted and self.waiting and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            request = self.waiting[0]
            num_new = self._admit(request, budget, out)
            if num_new == 0:
                break
            self.waiting.popleft()
            self.running.append(request)
            out.requests.append(self._scheduled(request, num_new))
            budget -= num_new
        self.prefill_first.apply(out, num_running)
        return out

    def schedule_ahead(self, prev: SchedulerOutput) -> SchedulerOutput | None:
        """Overlap scheduling: the next decode step, planned while ``prev`` still runs.

        Every request of ``prev`` that samples and cannot finish by length there gets one token
        at position ``num_tokens`` (the token ``prev`` is sampling, read on the device). Returns
        None, changing nothing, unless this is exactly what a normal ``schedule`` would run next:
        no waiting request, no pending session traffic, every running request sampled in
        ``prev`` and pages for every row without evicting or preempting. A request that
        ``prev`` finishes by EOS or a stop token wastes its row; ``update`` skips it.
        """
        if self.waiting or not self._pending_ops.is_empty:
            return None
        rows = {}
        for scheduled in prev.requests:
            if scheduled.sample:
                rows[scheduled.request.request_id] = len(rows)
        if len(rows) != len(self.running) or len(self.running) > self.config.max_num_seqs:
            return None
        ahead = []
        for request in self.running:
            row = rows.get(request.request_id)
            if row is None or len(ahead) >= self.config.max_num_batched_tokens:
                return None
            if request.num_tokens + 1 >= request.max_len or (
                    request.params.max_tokens is not None
                    and len(request.output_ids) + 1 >= request.params.max_tokens):
                continue  # the token prev samples is its last
            ahead.append((request, row))
        if not ahead:
            return None
        need = sum(max(0, self.pool.pages_for(r.num_tokens + 1) - len(r.page_ids))
                   for r, _ in ahead)
        if need > self.pool.num_free:
            return None
        out = SchedulerOutput()
        for request, row in ahead:
            reserved = self._reserve(request, request.num_tokens + 1)
            assert reserved, "free pages were counted above"
            self.stats.num_computed_tokens += 1
            out.requests.append(ScheduledRequest(request, request.num_tokens, 1, True,
                                                 prev_row=row))
        self.prefill_first.decodes_ran()
        return out

    def _scheduled(self, request: Request, num_new: int,
                   drafts: list[int] | None = None) -> ScheduledRequest:
        start = request.num_computed_tokens
        self.stats.num_computed_tokens += num_new
        num_known = num_new - len(drafts or ())
        return ScheduledRequest(request, start, num_new, start + num_known == request.num_tokens,
                                drafts or [])

    def _take_drafts(self, request: Request, budget: int) -> list[int]:
        """The request's drafts, trimmed so that the step and every token it could append fit
        the budget, ``max_tokens`` and ``max_len``; clears ``request.draft_ids``."""
        drafts, request.draft_ids = request.draft_ids, []
        if not drafts or request.num_tokens - request.num_computed_tokens != 1:
            return []
        # A verify step appends up to len(drafts) + 1 tokens.
        room = request.max_len - request.num_tokens
        if request.params.max_tokens is not None:
            room = min(room, request.params.max_tokens - len(request.output_ids))
        return drafts[: max(0, min(budget, room) - 1)]

    def _admit(self, request: Request, budget: int, out: SchedulerOutput,
               reuse: bool = True) -> int:
        """Match the cache, lock and allocate; returns the chunk size or 0 if it cannot start.
        ``reuse=False``: compute the whole prompt (the retry when the cached pages it would
        reuse, locked, leave no room)."""
        ps = self.config.page_size
        num_cached, shared, partial = 0, [], None
        if self.config.enable_prefix_caching and reuse:
            # Leave at least one token to compute: its logits give the next token.
            prefix = request.all_ids[: request.num_tokens - 1]
            if request.session is not None:
                hint = request.session
                self.sessions.renew(hint.session_id, hint.lease_s)  # a turn renews the lease
                self.sessions.prefetch(hint.session_id, request.cache_salt, prefix,
                                       self._allocate, out.session_ops)
            match = self.sessions.match(prefix, request.cache_salt)
            self.sessions.lock(match.lock_node)
            request.lock_node = match.lock_node
            shared, num_cached = match.pages, match.num_tokens
            if match.partial_len:
                partial = (match.partial_page, match.partial_len)
        request.page_ids = list(shared)
        request.num_shared_pages = len(shared)
        num_new = min(request.num_tokens - num_cached, budget)
        first_own = len(request.page_ids)
        if not self._reserve(request, num_cached + num_new):
            self._release(request)
            if (num_cached or partial) and not self.running:
                # What it would reuse stays locked, with the partial page it copies and the
                # rest of that node: on a full pool that can be the difference, and with
                # nothing running nothing else would ever free a page. Recompute instead.
                return self._admit(request, budget, out, reuse=False)
            return 0
        if partial is not None:
            out.copies.append((partial[0], request.page_ids[first_own], partial[1]))
        assert len(request.page_ids) * ps >= num_cached + num_new, "reservation too small"
        request.num_computed_tokens = num_cached
        if request.num_preemptions == 0:
            request.num_cached_tokens = num_cached
        self.stats.num_cached_tokens += num_cached
        request.status = RequestStatus.RUNNING
        return num_new

    def _allocate(self, num: int) -> list[int] | None:
        if self.pool.num_free < num:
            short = self.pool.num_free + self.cache.num_evictable_pages < num
            if short and len(self.running) <= 1:
                # Pins never block progress: when no other running request could free pages
                # (by finishing or being preempted), demote pins (back up, unlock) for room.
                self.sessions.demote(self._step_ops, num - self.pool.num_free)
            if self.pool.num_free + self.cache.num_evictable_pages < num:
                return None
            freed = self.cache.evict(num - self.pool.num_free)
            self.stats.num_evicted_pages += len(freed)
            self.pool.free(freed)
        return self.pool.allocate(num)

    def _reserve(self, request: Request, num_tokens: int) -> bool:
        """Grow ``request``'s page table to hold ``num_tokens``, evicting cache pages if needed."""
        need = self.pool.pages_for(num_tokens) - len(request.page_ids)
        if need <= 0:
            return True
        pages = self._allocate(need)
        if pages is None:
            return False
        request.page_ids.extend(pages)
        return True

    # ------------------------------------------------------------------ update
    def update(self, out: SchedulerOutput, sampled: dict[str, list[int]]) -> list[Request]:
        """Advance the scheduled requests by a finished step; returns those that got tokens."""
        changed = []
        for scheduled in out.requests:
            request = scheduled.request
            if request.is_finished:  # aborted while the step ran
                continue
            if not scheduled.sample:
                request.num_computed_tokens += scheduled.num_new_tokens
                continue
            num_drafts = len(scheduled.draft_ids)
            token_ids = sampled[request.request_id]
            assert 1 <= len(token_ids) <= 1 + num_drafts, (
                f"{request.request_id}: {len(token_ids)} tokens for {num_drafts} drafts")
            num_appended = 0
            for token_id in token_ids:
                request.append_token(token_id)
                num_appended += 1
                if request.finish_reason is not None:
                    break
            # Valid KV: the known tokens, plus the drafts that became the first num_appended - 1
            # appended tokens. The KV of rejected drafts (and of accepted ones after a finishing
            # token) stays in its slots as garbage that later writes overwrite; nothing moves.
            request.num_computed_tokens += scheduled.num_new_tokens - num_drafts + num_appended - 1
            changed.append(request)
            if request.finish_reason is not None:
                self.running.remove(request)
                kv_tokens = request.all_ids[: request.num_computed_tokens]
                self._release(request)
                request.status = RequestStatus.FINISHED
                if request.session is not None and self.config.enable_prefix_caching and kv_tokens:
                    self.sessions.pin(request.session, request.cache_salt, kv_tokens,
                                      self._pending_ops)
        return changed

    def _preempt(self, request: Request) -> None:
        logger.debug("preempting %s", request.request_id)
        self._release(request)
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)

    def _release(self, request: Request) -> None:
        """Give the request's pages back: computed KV to the cache, the rest to the pool."""
        num_kv = request.num_computed_tokens
        pages = request.page_ids
        if self.config.enable_prefix_caching and num_kv > 0:
            num_kv_pages = self.pool.pages_for(num_kv)
            to_free = self.cache.insert(request.all_ids[:num_kv], pages[:num_kv_pages],
                                        request.cache_salt)
            to_free += pages[num_kv_pages:]
        else:
            to_free = pages[request.num_shared_pages :]
        self.pool.free(to_free)
        if request.lock_node is not None:
            self.sessions.unlock(request.lock_node)
        request.page_ids, request.num_shared_pages, request.lock_node = [], 0, None
        request.num_computed_tokens = 0

    # --------------------------------------------------------------- integrity
    def check_integrity(self) -> None:
        """free + cached + in-use pages == total, with no page counted twice."""
        self.cache.check_integrity()
        self.sessions.check_integrity()
        owned = [p for r in self.running for p in r.page_ids[r.num_shared_pages :]]
        cached = self.cache.all_pages()
        free = [p for p in range(1, self.pool.num_pages) if self.pool.is_free(p)]
        assert len(free) == self.pool.num_free, "free-list size drifted"
        assert len(set(owned)) == len(owned), "a page is owned by two requests"
        every = set(owned) | set(cached) | set(free)
        assert len(every) == len(owned) + len(cached) + len(free), "a page has two owners"
        assert len(every) == self.pool.num_total, (
            f"pages leaked: free {len(free)} + cached {len(cached)} + in use {len(owned)} "
            f"!= total {self.pool.num_total}"
        )
        for request in self.waiting:
            assert not request.page_ids and request.lock_node is None, "waiting request holds KV"
