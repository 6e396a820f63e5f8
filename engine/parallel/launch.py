"""Where the ranks come from: a torchrun-style launcher, or rank 0 spawning the rest locally.

Multi-host (or any launcher): every rank runs the same command with the standard
``torch.distributed`` environment (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); rank 0 serves, the others become workers (``runtime.cli`` dispatches them).
Single host (``--tp N`` without that environment): rank 0 opens the rendezvous store on a free
port and starts ranks 1..N-1 as ``python -m engine.parallel.worker`` processes, watches them,
and stops them when it closes. A locally spawned worker exits when its parent disappears.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.config import EngineConfig

logger = logging.getLogger(__name__)

PARENT_ENV = "AGENTSPEED_TP_PARENT"  # set for locally spawned workers: rank 0's pid
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class RankEnv:
    """This process's place in the group, as a launcher describes it."""

    rank: int
    world_size: int
    local_rank: int  # the GPU index on this host
    master_addr: str
    master_port: int
    spawned_by: int | None = None  # rank 0's pid for a locally spawned worker


def launched_env() -> RankEnv | None:
    """The ``torch.distributed`` environment variables, or None when they are not all set."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    parent = env.get(PARENT_ENV)
    return RankEnv(int(env["RANK"]), int(env["WORLD_SIZE"]),
                   int(env.get("LOCAL_RANK", env["RANK"])), env["MASTER_ADDR"],
                   int(env["MASTER_PORT"]), int(parent) if parent else None)


def is_worker_process(config: EngineConfig) -> bool:
    """Whether this process is a launched rank other than 0 of a tensor-parallel engine."""
    env = launched_env()
    return config.tensor_parallel_size > 1 and env is not None and env.rank > 0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalWorkers:
    """Ranks 1..N-1 of a single-host group, as child processes of rank 0."""

    def __init__(self, config: EngineConfig, master_port: int) -> None:
        world_size = config.tensor_parallel_size
        payload = json.dumps(dataclasses.asdict(config))
        pythonpath = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        self.procs: dict[int, subprocess.Popen] = {}
        for rank in range(1, world_size):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(master_port), PYTHONPATH=pythonpath,
                       **{PARENT_ENV: str(os.getpid())})
            self.procs[rank] = subprocess.Popen(
                [sys.executable, "-m", "engine.parallel.worker", payload], env=env)
        self._stopping = threading.Event()

    @property
    def pids(self) -> dict[int, int]:
        return {rank: p.pid for rank, p in self.procs.items()}

    def failure(self) -> str | None:
        """Why the first worker that exited did, or None while all run."""
        for rank, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                return (f"tensor-parallel rank {rank} (pid {proc.pid}) exited "
                        f"({describe_exit(code)}); the engine cannot continue without it")
        return None

    def wait_failure(self, timeout_s: float) -> str | None:
        """``failure()``, waiting up to ``timeout_s`` for one (a peer's socket closes a moment
        before its process is reaped)."""
        deadline = time.monotonic() + timeout_s
        while (why := self.failure()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return why

    def watch(self, on_failure: Callable[[str], None], interval_s: float = 0.2) -> None:
        """Call ``on_failure(why)`` from a daemon thread when a worker exits unasked."""

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                why = self.failure()
                if why is not None:
                    if not self._stopping.is_set():
                        on_failure(why)
                    return

        threading.Thread(target=loop, name="tp-worker-watch", daemon=True).start()

    def expect_exit(self) -> None:
        """From now on a worker's exit is no failure (rank 0 is about to stop them)."""
        self._stopping.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Wait for the workers to exit (after ``StopWorker``), terminating stragglers."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        self._stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Exit this process (from a daemon thread) once ``parent_pid`` is no longer its parent."""

    def loop() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        logger.warning("tensor-parallel rank 0 (pid %d) is gone; worker exiting", parent_pid)
        os._exit(1)

    threading.Thread(target=loop, name="tp-parent-watch", daemon=True).start()
