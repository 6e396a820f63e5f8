"""The API process's handle on the engine process: spawn it, stream requests through ZMQ.

One background task reads every engine message and routes outputs to per-request queues, so a
slow client only ever backs up its own queue. If the engine process dies, every waiting request
fails with a server error instead of hanging, and ``on_dead`` is told (the server then exits:
an engine never comes back, and a supervisor restarts the whole server).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
import zmq
import zmq.asyncio

from engine.config import EngineConfig
from engine.engine_process import run_engine
from engine.ipc import (
    AbortRequests,
    AddRequest,
    CloseSession,
    EngineDead,
    EngineReady,
    EngineStats,
    FromEngine,
    RequestFailed,
    Shutdown,
    StepOutputs,
    TouchSession,
)
from engine.outputs import EngineOutput
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint

logger = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine refused or failed a request; ``server_error`` tells whose fault it was."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 server_error: bool = False) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.server_error = message, param, code, server_error


class EngineClient:
    def __init__(self, config: EngineConfig, log_level: str = "WARNING") -> None:
        self.config = config
        self.log_level = log_level
        self.ready: EngineReady | None = None
        self.stats: EngineStats | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._dead: str | None = None
        # Called once when the engine dies after start-up (the server shuts itself down).
        self.on_dead: Callable[[str], None] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(FromEngine)

    async def start(self, timeout_s: float = 600.0) -> EngineReady:
        base = os.path.join(tempfile.gettempdir(), f"agentspeed-{uuid.uuid4().hex[:12]}")
        in_addr, out_addr = f"ipc://{base}-in", f"ipc://{base}-out"
        self._ctx = zmq.asyncio.Context()
        self._to_engine = self._ctx.socket(zmq.PUSH)
        self._to_engine.bind(in_addr)
        self._from_engine = self._ctx.socket(zmq.PULL)
        self._from_engine.bind(out_addr)
        spawn = multiprocessing.get_context("spawn")
        self.process = spawn.Process(target=run_engine, name="agentspeed-engine", daemon=True,
                                     args=(self.config, in_addr, out_addr, self.log_level))
        self.process.start()
        message = await self._wait_ready(timeout_s)
        if isinstance(message, EngineDead):
            self.process.join(5)
            raise RuntimeError(message.message)
        self.ready = message
        self._reader = asyncio.create_task(self._read_loop())
        self._watchdog = asyncio.create_task(self._watch_process())
        return message

    async def _wait_ready(self, timeout_s: float) -> EngineReady | EngineDead:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if await self._from_engine.poll(200):
                return self._decoder.decode(await self._from_engine.recv())
            if not self.process.is_alive():
                return EngineDead(f"engine process exited with code {self.process.exitcode}")
        return EngineDead(f"engine did not start within {timeout_s:.0f} s")

    async def _read_loop(self) -> None:
        while True:
            message = self._decoder.decode(await self._from_engine.recv())
            if isinstance(message, StepOutputs):
                self.stats = message.stats
                for out in message.outputs:
                    queue = self._queues.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
            elif isinstance(message, RequestFailed):
                queue = self._queues.get(message.request_id)
                if queue is not None:
                    queue.put_nowait(EngineError(message.message, message.param, message.code,
                                                 message.server_error))
            elif isinstance(message, EngineDead):
                self._fail_all(message.message)

    async def _watch_process(self) -> None:
        while self.process.is_alive():
            await asyncio.sleep(0.5)
        if self._dead is None:
            self._fail_all(f"engine process died (exit code {self.process.exitcode})")

    def _fail_all(self, why: str) -> None:
        logger.error("%s", why)
        first = self._dead is None
        self._dead = why
        for queue in self._queues.values():
            queue.put_nowait(EngineError(why, server_error=True))
        if first and self.on_dead is not None:
            self.on_dead(why)

    @property
    def is_alive(self) -> bool:
        return self._dead is None

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                       session: SessionHint | None = None,
                       cache_salt: str = "") -> AsyncIterator[EngineOutput]:
        """Stream the engine's outputs for one request; leaving early aborts it in the engine."""
        if self._dead is not None:
            raise EngineError(self._dead, server_error=True)
        assert request_id not in self._queues, f"duplicate request id {request_id}"
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        finished = False
        try:
            await self._to_engine.send(self._encoder.encode(
                AddRequest(request_id, list(prompt_ids), params, session, cache_salt)))
            while not finished:
                item = await queue.get()
                if isinstance(item, EngineError):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            del self._queues[request_id]
            if not finished and self._dead is None:
                await self.abort([request_id])

    async def touch_session(self, session_id: str, lease_s: float | None = None,
                            retention: int | None = None) -> None:
        if self._dead is None:
            await self._to_engine.send(self._encoder.encode(
                TouchSession(session_id, lease_s, retention)))

    async def close_session(self, session_id: str) -> None:
        if self._dead is None:
            await self._to_engine.send(self._encoder.encode(CloseSession(session_id)))

    async def abort(self, request_ids: list[str]) -> None:
        await self._to_engine.send(self._encoder.encode(AbortRequests(list(request_ids))))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        for task in (getattr(self, "_reader", None), getattr(self, "_watchdog", None)):
            if task is not None:
                task.cancel()
        if self.process.is_alive():
            await self._to_engine.send(self._encoder.encode(Shutdown()))
            await asyncio.to_thread(self.process.join, timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 5)
        if self.process.is_alive():
            self.process.kill()
        self._to_engine.close(linger=0)
        self._from_engine.close(linger=0)
        self._ctx.term()
