"""The default session store: one embedded SQLite file, durable across restarts.

Layout: one table ``responses(response_id TEXT PRIMARY KEY, expires_at REAL, record BLOB)``;
``record`` is the msgspec-msgpack encoding of a ``ResponseRecord``, ``expires_at`` unix seconds
(wall clock, so a TTL survives a restart) or NULL for no expiry. An expired row is invisible to
``get`` and ``touch`` (which never revives it) and deleted when read; a sweep every
``purge_interval_s`` (run by ``put``) deletes the rest.

Durability: WAL journal, ``synchronous=NORMAL``. Every statement commits before it returns (the
connection is in autocommit mode) and a commit is a write into the WAL file, so a process killed
with ``kill -9`` right after ``put`` returned loses nothing; only an OS crash or power loss can
drop the last commits. Callers must ``await put`` before they report a response finished.

Threading: one connection, used only by this store's single worker thread, so the event loop
never blocks on SQLite and concurrent requests are serialized there. Several processes may share
one file on one host (WAL readers never block; writers wait up to ``busy_timeout_ms``); a file
that stays locked past that, or a full disk, raises ``StoreUnavailableError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import msgspec

from sessions.record import ResponseRecord
from sessions.stores.base import SessionStore, StoreUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA_VERSION = 1
_TOUCH_BATCH = 500  # ids per UPDATE, well under SQLite's bound on statement variables
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    response_id TEXT PRIMARY KEY,
    expires_at REAL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)
    WHERE expires_at IS NOT NULL;
"""


class SQLiteStore(SessionStore):
    """Response records in one SQLite file (``":memory:"``: a private in-memory database)."""

    def __init__(self, path: str, busy_timeout_ms: int = 5000,
                 purge_interval_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        if path != ":memory:":
            path = os.path.abspath(path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.purge_interval_s = purge_interval_s
        self.clock = clock  # unix seconds; expiry is wall-clock so it survives a restart
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ResponseRecord)
        self._next_purge = 0.0  # time.monotonic() of the next sweep (only touched by the worker)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        # Opened here (at startup) so a bad path fails the server at once; afterwards only the
        # worker thread touches the connection.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_ms / 1000)
        try:
            if path != ":memory:":
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":  # e.g. a file system without shared memory
                    raise RuntimeError(f"SQLite refused WAL mode for {path} (got {mode})")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{path} has session schema v{version}; this build knows "
                                   f"v{_SCHEMA_VERSION}")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()
            self._executor.shutdown(wait=False)
            raise
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args) -> T:
        if self._closed:
            raise RuntimeError("the session store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk full, I/O error
            raise StoreUnavailableError(f"SQLite session store {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ worker-thread side
    def _get(self, response_id: str) -> bytes | None:
        row = self._conn.execute("SELECT expires_at, record FROM responses WHERE response_id = ?",
                                 (response_id,)).fetchone()
        if row is None:
            return None
        expires_at, blob = row
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            self._conn.execute("DELETE FROM responses WHERE response_id = ? AND expires_at <= ?",
                               (response_id, now))
            return None
        return blob

    def _put(self, response_id: str, expires_at: float | None, blob: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO responses (response_id, expires_at, record) "
                           "VALUES (?, ?, ?)", (response_id, expires_at, blob))
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self.purge_interval_s
            self._purge()

    def _purge(self) -> int:
        cursor = self._conn.execute("DELETE FROM responses WHERE expires_at IS NOT NULL AND "
                                    "expires_at <= ?", (self.clock(),))
        if cursor.rowcount:
            logger.info("purged %d expired session records from %s", cursor.rowcount, self.path)
        return cursor.rowcount

    def _touch(self, response_ids: list[str], expires_at: float) -> int:
        found = 0
        for i in range(0, len(response_ids), _TOUCH_BATCH):
            batch = response_ids[i:i + _TOUCH_BATCH]
            marks = ",".join("?" * len(batch))
            cursor = self._conn.execute(
                f"UPDATE responses SET expires_at = ? WHERE response_id IN ({marks}) "
                "AND (expires_at IS NULL OR expires_at > ?)", (expires_at, *batch, self.clock()))
            found += cursor.rowcount
        return found

    def _delete(self, response_id: str) -> bool:
        cursor = self._conn.execute("DELETE FROM responses WHERE response_id = ?", (response_id,))
        return cursor.rowcount > 0

    # ------------------------------------------------------------------ the contract
    async def get(self, response_id: str) -> ResponseRecord | None:
        blob = await self._run(self._get, response_id)
        if blob is None:
            return None
        try:
            return self._decoder.decode(blob)
        except msgspec.DecodeError:
            logger.warning("unreadable session record %s in %s; treated as missing",
                           response_id, self.path)
            return None

    async def put(self, record: ResponseRecord, ttl_s: float | None) -> None:
        expires_at = None if ttl_s is None else self.clock() + ttl_s
        await self._run(self._put, record.response_id, expires_at, self._encoder.encode(record))

    async def touch(self, response_ids: list[str], ttl_s: float) -> int:
        if not response_ids:
            return 0
        return await self._run(self._touch, list(response_ids), self.clock() + ttl_s)

    async def delete(self, response_id: str) -> bool:
        return await self._run(self._delete, response_id)

    async def purge_expired(self) -> int:
        """Delete every expired record now; returns how many."""
        return await self._run(self._purge)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # refuse new work; what is queued runs first (one FIFO worker)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)
