"""An in-process store: for connection-local (``store: false``) records and tests of one process."""

from __future__ import annotations

import time

from sessions.record import ResponseRecord
from sessions.stores.base import SessionStore


class MemoryStore(SessionStore):
    def __init__(self, max_records: int = 100_000) -> None:
        self._records: dict[str, tuple[ResponseRecord, float | None]] = {}
        self.max_records = max_records

    async def get(self, response_id: str) -> ResponseRecord | None:
        entry = self._records.get(response_id)
        if entry is None:
            return None
        record, expires = entry
        if expires is not None and expires < time.monotonic():
            del self._records[response_id]
            return None
        return record

    async def put(self, record: ResponseRecord, ttl_s: float | None) -> None:
        if len(self._records) >= self.max_records and record.response_id not in self._records:
            del self._records[next(iter(self._records))]  # oldest first
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        self._records[record.response_id] = (record, expires)

    async def delete(self, response_id: str) -> bool:
        return self._records.pop(response_id, None) is not None
