"""Response chains: resolve ``previous_response_id`` to exact tokens, save finished turns.

Only the key that created a chain can see it: to any other key a foreign id does not exist
(the same ``not found`` as an unknown id, so ids cannot be probed). Records made with
``store: false`` live only in the connection-local store of the WebSocket that made them.
"""

from __future__ import annotations

import hashlib
import secrets

from sessions.record import ResponseRecord
from sessions.stores.base import SessionStore
from sessions.stores.memory import MemoryStore


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
    def __init__(self, store: SessionStore, lease_s: float = 600.0) -> None:
        self.store = store
        self.lease_s = lease_s

    async def resolve(self, response_id: str, owner: str,
                      local: MemoryStore | None = None) -> ResponseRecord:
        record = await local.get(response_id) if local is not None else None
        if record is None:
            record = await self.store.get(response_id)
        if record is None or not secrets.compare_digest(record.owner, owner):
            raise ResponseNotFoundError(response_id)
        return record

    async def save(self, record: ResponseRecord, local: MemoryStore | None = None) -> None:
        if local is not None:
            await local.put(record, self.lease_s)
        if record.store:
            await self.store.put(record, None)

    async def get(self, response_id: str, owner: str) -> ResponseRecord:
        record = await self.store.get(response_id)
        if record is None or not secrets.compare_digest(record.owner, owner):
            raise ResponseNotFoundError(response_id)
        return record

    async def delete(self, response_id: str, owner: str) -> ResponseRecord:
        """Delete the owner's record; returns what was deleted."""
        record = await self.get(response_id, owner)
        await self.store.delete(response_id)
        return record
