"""An in-process store: for connection-local (``store: false``) records and tests of one process."""

from __future__ import annotations

import time
from collections.abc import Callable

from sessions.record import ResponseRecord
from sessions.stores.base import SessionStore


class MemoryStore(SessionStore):
    def __init__(self, max_records: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # id -> (record, clock() when it expires or None); insertion order is age order
        self._records: dict[str, tuple[ResponseRecord, float | None]] = {}
        self.max_records = max_records
        self.clock = clock

    async def get(self, response_id: str) -> ResponseRecord | None:
        entry = self._records.get(response_id)
        if entry is None:
            return None
        record, expires = entry
        if expires is not None and expires <= self.clock():
            del self._records[response_id]
            return None
        return record

    async def put(self, record: ResponseRecord, ttl_s: float | None) -> None:
        if len(self._records) >= self.max_records and record.response_id not in self._records:
            del self._records[next(iter(self._records))]  # oldest first
        expires = None if ttl_s is None else self.clock() + ttl_s
        self._records[record.response_id] = (record, expires)

    async def touch(self, response_ids: list[str], ttl_s: float) -> int:
        found = 0
        for response_id in response_ids:
            record = await self.get(response_id)  # drops it if expired
            if record is not None:
                self._records[response_id] = (record, self.clock() + ttl_s)
                found += 1
        return found

    async def delete(self, response_id: str) -> bool:
        return self._records.pop(response_id, None) is not None
