"""Response chains: resolve ``previous_response_id`` to exact tokens, save finished turns.

Only the key that created a chain can see it: to any other key a foreign id does not exist
(the same ``not found`` as an unknown id, so ids cannot be probed). Records made with
``store: false`` live only in the connection-local store of the WebSocket that made them.

Retention rule: a stored record lives ``STORE_TTL_LEASES`` session leases (``lease_s``, the
``--session-lease-s`` flag: 10 min by default, so 24 h) after the last turn of its chain. Every
saved turn writes its record with that TTL and gives its ancestors the same fresh TTL, so an
active chain never expires piecemeal, and a chain is always continuable for far longer than its
KV stays pinned: after the lease its KV is demoted or recomputed, not lost.

Store outages: a finished turn whose save fails with ``StoreUnavailableError`` is not thrown
away. Its record waits in a bounded in-memory retry buffer (``max_pending_records`` records,
``max_pending_tokens`` token ids) and the response still goes to the client; a background task
retries with capped backoff, and any request that needs a waiting id (continue, get, delete)
tries to flush first, so the chain becomes continuable the moment the store is back and fails
fast with ``StoreUnavailableError`` until then. Each waiting record is written once. What is
lost: turns still waiting when this process exits, and, while one waits, other replicas do not
see it yet. When the buffer is full the save raises as before, and the turn fails with a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections import OrderedDict

from sessions.record import ResponseRecord
from sessions.stores.base import SessionStore, StoreUnavailableError
from sessions.stores.memory import MemoryStore

logger = logging.getLogger(__name__)

STORE_TTL_LEASES = 144  # stored records live this many leases after their chain's last turn


class ResponseNotFoundError(LookupError):
    def __init__(self, response_id: str) -> None:
        super().__init__(f"Previous response with id '{response_id}' not found.")
        self.response_id = response_id


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)  # 192 random bits


def owner_of(api_key: str | None) -> str:
    """A stable, non-reversible owner tag for an API key ("" when auth is off)."""
    if not api_key:
        return ""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class SessionManager:
    """Owns the store and the retry buffer of one API process; used only from its event loop."""

    def __init__(self, store: SessionStore, lease_s: float = 600.0,
                 max_pending_records: int = 4096, max_pending_tokens: int = 4_000_000,
                 retry_s: tuple[float, float] = (0.25, 5.0)) -> None:
        assert lease_s > 0, f"lease_s must be > 0, got {lease_s}"
        self.store = store
        self.lease_s = lease_s
        self.max_pending_records = max_pending_records
        self.max_pending_tokens = max_pending_tokens
        self.retry_s = retry_s  # (first, longest) wait between background flushes; doubles
        self.pending: OrderedDict[str, ResponseRecord] = OrderedDict()  # id -> record, oldest 1st
        self.num_pending_tokens = 0
        self.num_deferred = 0  # saves that had to wait for the store, since start
        self._flush_lock = asyncio.Lock()
        self._retry_task: asyncio.Task | None = None

    @property
    def ttl_s(self) -> float:
        """Store TTL of a record after its chain's last turn (the retention rule)."""
        return STORE_TTL_LEASES * self.lease_s

    # ------------------------------------------------------------------ reading
    async def resolve(self, response_id: str, owner: str,
                      local: MemoryStore | None = None) -> ResponseRecord:
        record = await local.get(response_id) if local is not None else None
        if record is None:
            await self._settle(response_id)
            record = await self.store.get(response_id)
        if record is None or not secrets.compare_digest(record.owner, owner):
            raise ResponseNotFoundError(response_id)
        return record

    async def get(self, response_id: str, owner: str) -> ResponseRecord:
        await self._settle(response_id)
        record = await self.store.get(response_id)
        if record is None or not secrets.compare_digest(record.owner, owner):
            raise ResponseNotFoundError(response_id)
        return record

    async def delete(self, response_id: str, owner: str) -> ResponseRecord:
        """Delete the owner's record; returns what was deleted."""
        record = await self.get(response_id, owner)
        await self.store.delete(response_id)
        return record

    async def _settle(self, response_id: str) -> None:
        """A waiting record is written before anything reads it: raises StoreUnavailableError
        while the store is still down."""
        if response_id in self.pending:
            await self.flush()

    # ------------------------------------------------------------------ writing
    async def save(self, record: ResponseRecord, local: MemoryStore | None = None) -> bool:
        """Save a finished turn and refresh its chain's TTL. True once the record is in the
        store (or needs none: ``store=false``); False when the store is down and the record
        waits in the retry buffer; ``StoreUnavailableError`` when the buffer is full too."""
        if local is not None:
            await local.put(record, self.ttl_s)
            await local.touch(record.ancestor_ids, self.ttl_s)
        if not record.store:
            return True
        try:
            await self._write(record)
            return True
        except StoreUnavailableError:
            self._defer(record)
            return False

    async def _write(self, record: ResponseRecord) -> None:
        await self.store.put(record, self.ttl_s)
        if record.ancestor_ids:
            try:
                await self.store.touch(record.ancestor_ids, self.ttl_s)
            except StoreUnavailableError:  # the record is saved; ancestors keep their old TTL
                logger.warning("could not refresh the TTL of %s's chain", record.response_id)

    def _defer(self, record: ResponseRecord) -> None:
        num_tokens = len(record.token_ids)
        if (len(self.pending) >= self.max_pending_records
                or self.num_pending_tokens + num_tokens > self.max_pending_tokens):
            raise StoreUnavailableError(
                f"session store unavailable and {len(self.pending)} finished turns already "
                "wait to be saved")
        self.pending[record.response_id] = record
        self.num_pending_tokens += num_tokens
        self.num_deferred += 1
        logger.warning("session store unavailable: response %s waits to be saved (%d waiting)",
                       record.response_id, len(self.pending))
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_loop())

    async def flush(self) -> None:
        """Write every waiting record, oldest first; raises StoreUnavailableError (leaving the
        rest waiting) at the first the store refuses."""
        async with self._flush_lock:  # one writer: a record is written once
            while self.pending:
                response_id, record = next(iter(self.pending.items()))
                await self._write(record)
                del self.pending[response_id]
                self.num_pending_tokens -= len(record.token_ids)
                logger.info("saved waiting response %s", response_id)

    async def _retry_loop(self) -> None:
        delay, longest = self.retry_s
        try:
            while self.pending:
                await asyncio.sleep(delay)
                try:
                    await self.flush()
                except StoreUnavailableError:
                    delay = min(2 * delay, longest)
                except Exception:  # e.g. the store was closed at shutdown: nothing will work
                    logger.exception("the session store failed while saving waiting turns")
                    return
        finally:
            if self.pending:
                logger.error("%d finished turns were never saved (the session store stayed "
                             "unavailable)", len(self.pending))

    async def close(self) -> None:
        """Stop retrying (one last try first) and close the store."""
        with contextlib.suppress(StoreUnavailableError):
            await self.flush()
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
        await self.store.close()
