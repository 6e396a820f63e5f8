"""Session stores behind one contract, chosen by URL.

    None, "sqlite"           the default: $AGENTSPEED_CACHE/sessions.sqlite3
    sqlite:///ABS/PATH       an SQLite file, the path always absolute (sqlite:////ABS/PATH too);
                             sqlite:///:memory: for a private in-memory database
    redis://HOST:PORT/DB     Redis, shared by replicas (rediss:// for TLS)
    memory://                this process only; lost at exit
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from sessions.stores.base import SessionStore, StoreUnavailableError

__all__ = ["SessionStore", "StoreUnavailableError", "default_sqlite_path", "open_store"]


def default_sqlite_path() -> str:
    from engine.default_model import cache_dir

    return os.path.join(cache_dir(), "sessions.sqlite3")


def open_store(url: str | None) -> SessionStore:
    """The store a ``--session-store`` URL names; ValueError for one it does not."""
    if url is None or url.strip() in ("", "sqlite", "sqlite://"):
        from sessions.stores.sqlite import SQLiteStore

        return SQLiteStore(default_sqlite_path())
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        from sessions.stores.sqlite import SQLiteStore

        if parts.netloc or not parts.path or parts.query:
            raise ValueError(f"session store {url!r}: write sqlite:///ABSOLUTE/PATH "
                             "(three slashes, then the absolute path) or sqlite:///:memory:")
        path = "/" + parts.path.lstrip("/")  # sqlite:////abs (SQLAlchemy's form) works too
        return SQLiteStore(":memory:" if path == "/:memory:" else path)
    if scheme in ("redis", "rediss"):
        from sessions.stores.redis import RedisStore

        if not parts.hostname:
            raise ValueError(f"session store {url!r}: write redis://HOST:PORT/DB")
        return RedisStore(url.strip())
    if scheme == "memory":
        from sessions.stores.memory import MemoryStore

        return MemoryStore()
    raise ValueError(f"unknown session store {url!r}: expected 'sqlite', sqlite:///ABS/PATH, "
                     "redis://HOST:PORT/DB or memory://")
