"""A real ``redis-server`` per test module or session, stoppable and restartable on its port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import redis

from tests.runtime.server import free_port

REDIS_BIN = shutil.which("redis-server")


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``; ``persistent`` keeps data across a restart
    (append-only file, fsync on every write), otherwise nothing is saved."""

    def __init__(self, data_dir: str, persistent: bool = False) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else \
            ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", self.data_dir, *aof],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def pause(self) -> None:  # alive and accepting TCP, but never answering: a hung server
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


def need_redis_server() -> None:
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")


@pytest.fixture
def redis_server(tmp_path):
    """A private Redis that a test may stop, pause and restart."""
    need_redis_server()
    server = RedisServer(str(tmp_path)).start()
    yield server
    server.resume()
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A shared Redis for the contract suite: ``$AGENTSPEED_TEST_REDIS_URL``'s server (on DB 13,
    flushed) when set, else a ``redis-server`` started for the session."""
    external = os.environ.get("AGENTSPEED_TEST_REDIS_URL")
    if external:
        url = urlsplit(external)._replace(path="/13").geturl()  # a DB of our own
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
        yield url
        return
    need_redis_server()
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    yield server.url(0)
    server.stop()
