"""The session store contract: response records by id, each with a time-to-live.

Implementations are async and safe to share by all requests of one API process. ``get`` of a
missing or expired id returns None; ``put`` overwrites (record and TTL; ``None``: no expiry);
``touch`` gives the ids that are still there a fresh TTL (expired ones stay gone) and says how
many it found; ``delete`` says whether the id was there. ``put`` returns only once the record is
as durable as the backend gets.

A backend that cannot be reached raises ``StoreUnavailableError`` quickly (seconds, not minutes)
and the same store object works again once the backend is back. Pick one with
``sessions.stores.open_store(url)``.

TTLs are the caller's: ``SessionManager`` writes every stored record with a TTL derived from the
session lease and refreshes the whole chain on every turn (see ``sessions.manager``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from sessions.record import ResponseRecord


class StoreUnavailableError(RuntimeError):
    """The backing store cannot be reached; the request fails fast and may be retried."""


class SessionStore(ABC):
    @abstractmethod
    async def get(self, response_id: str) -> ResponseRecord | None: ...

    @abstractmethod
    async def put(self, record: ResponseRecord, ttl_s: float | None) -> None: ...

    @abstractmethod
    async def touch(self, response_ids: list[str], ttl_s: float) -> int: ...

    @abstractmethod
    async def delete(self, response_id: str) -> bool: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass
