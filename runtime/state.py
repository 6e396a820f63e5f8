"""Server settings and the shared state every handler reads (one per API process)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.ipc import EngineReady
from runtime.engine_client import EngineClient
from runtime.metrics import Metrics
from sessions.manager import SessionManager
from tools.render import ChatRenderer


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    served_model_name: str | None = None  # None: the model directory's name
    max_body_bytes: int = 8 << 20  # HTTP bodies and WebSocket frames
    max_concurrent_requests: int = 256  # generations in flight over HTTP and WebSocket
    max_connections: int = 1024  # open WebSockets
    max_lanes_per_connection: int = 32
    # How long a finished turn's session KV stays pinned (renewed by every turn); stored records
    # live sessions.manager.STORE_TTL_LEASES leases after their chain's last turn.
    lease_s: float = 600.0
    salt_cache_per_key: bool = False  # True: no cached prefix is ever shared across API keys
    session_store: str | None = None  # URL for sessions.stores.open_store; None: default SQLite
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if not self.lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {self.lease_s}")


@dataclass
class ServerState:
    config: ServerConfig
    engine: EngineClient
    ready: EngineReady
    tokenizer: Any
    renderer: ChatRenderer
    sessions: SessionManager
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: int = 0  # generations running now
    connections: int = 0  # open WebSockets

    def __post_init__(self) -> None:
        self.metrics.watch_sessions(self.sessions)

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or os.path.basename(
            self.ready.model_path.rstrip("/"))

    def cache_salt(self, owner: str) -> str:
        return owner if self.config.salt_cache_per_key else ""

    def accepts_model(self, name: str | None) -> bool:
        return name in (None, "", self.model_name, "default", "agentspeed")
