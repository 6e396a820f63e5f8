"""The engine process: one loop that receives requests over ZMQ, steps the engine, sends outputs.

The loop blocks on its input socket only when it has nothing to run, so a busy engine never waits
on the API process. A request the engine refuses gets ``RequestFailed``; an exception inside a
step fails the requests of that step and the loop goes on, unless it is a CUDA error that
poisons the device (``is_device_fatal``): then the engine reports ``EngineDead`` and exits, and
the server with it. The process exits when told to, or
when its parent disappears (it never outlives the server). With tensor parallelism this process
is rank 0: it stops its ranks on the way out, and a rank that dies ends it with ``EngineDead``
naming that rank (no step can run without every rank).
"""

from __future__ import annotations

import logging
import os
import signal

import msgspec
import torch
import zmq

from engine.config import EngineConfig
from engine.errors import InvalidRequestError
from engine.ipc import (
    AbortRequests,
    AddRequest,
    CloseSession,
    EngineDead,
    EngineReady,
    EngineStats,
    RequestFailed,
    Shutdown,
    StepOutputs,
    ToEngine,
    TouchSession,
)
from engine.parallel import TensorParallel, TensorParallelError
from engine.parallel.context import close_tensor_parallel
from engine.spec import SpecStats
from kernels._triton import num_kernel_builds

logger = logging.getLogger(__name__)
_IDLE_POLL_MS = 500  # how often an idle engine checks that its parent is alive


def run_engine(config: EngineConfig, input_addr: str, output_addr: str, log_level: str) -> None:
    """Entry point of the engine process (spawned by the API process)."""
    logging.basicConfig(level=log_level, format="%(levelname)s engine %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API process decides when we stop
    parent = os.getppid()
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.connect(input_addr)
    outbox = ctx.socket(zmq.PUSH)
    outbox.connect(output_addr)
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(ToEngine)
    try:
        from engine.engine_core import EngineCore

        core = EngineCore(config)
    except Exception as exc:  # e.g. a bad model path: tell the server, then exit
        logger.exception("engine failed to start")
        close_tensor_parallel(abort=True)
        outbox.send(encoder.encode(EngineDead(f"engine failed to start: {exc}")))
        outbox.close(linger=2000)
        return
    runner = core.runner
    if runner.tp is not None:
        runner.tp.on_failure = lambda why: _die(output_addr, runner.tp, why)
    outbox.send(encoder.encode(EngineReady(
        model_path=runner.model_path, max_model_len=core.scheduler.max_request_len,
        vocab_size=core.vocab_size, eos_token_ids=list(core.eos_token_ids),
        page_size=config.page_size, num_pages=runner.num_pages,
        prefix_caching=config.enable_prefix_caching)))
    # Ahead pacing (on by default; --no-ahead-pacing): overlap scheduling holds the next decode
    # step back while it watches for new requests (engine.ahead_pacer); the messages stay in
    # the socket for _serve.
    if config.ahead_pacing:
        core.watch_input(lambda timeout_s: bool(inbox.poll(max(0, int(timeout_s * 1000)))))
    loop = _Loop(core, outbox, encoder)
    try:
        _serve(core, loop, inbox, outbox, decoder, parent)
    except (TensorParallelError, DeviceFailure) as exc:
        # A rank is gone, or the GPU is unusable: the engine cannot go on, and the server exits
        # (to be restarted) rather than fail every later request the same way.
        logger.critical("%s", exc)
        if runner.tp is not None:
            runner.tp.close(abort=True)
        outbox.send(encoder.encode(EngineDead(str(exc))))
        outbox.close(linger=2000)
        return
    runner.shutdown()


def _serve(core, loop: _Loop, inbox: zmq.Socket, outbox: zmq.Socket,
           decoder: msgspec.msgpack.Decoder, parent: int) -> None:
    while True:
        timeout = 0 if core.has_unfinished() else _IDLE_POLL_MS
        if inbox.poll(timeout):
            while True:
                try:
                    frame = inbox.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                message = decoder.decode(frame)
                if isinstance(message, Shutdown):
                    outbox.close(linger=1000)
                    return
                loop.handle(message)
        elif os.getppid() != parent:
            logger.warning("server process is gone; engine exiting")
            return
        if core.has_unfinished():
            loop.step()


def _die(output_addr: str, tp: TensorParallel, why: str) -> None:
    """From the worker-watch thread: a tensor-parallel rank exited. Tell the server and end
    this process now; the main thread may be waiting in a collective that never completes."""
    logger.critical("%s", why)
    ctx = zmq.Context()  # its own: term() returns once the message is out (or after 2 s)
    sock = ctx.socket(zmq.PUSH)
    sock.connect(output_addr)
    sock.send(msgspec.msgpack.encode(EngineDead(why)))
    sock.close(linger=2000)
    ctx.term()
    tp.workers.kill()
    os._exit(1)


class DeviceFailure(RuntimeError):
    """A CUDA error that leaves the device context unusable: every later step would fail."""


def is_device_fatal(exc: BaseException) -> bool:
    """Sticky CUDA errors (an illegal address, a device-side assert, a failed cuBLAS launch)
    poison the process's CUDA context; out-of-memory does not (only that step fails)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and "CUDA error" in str(exc)


class _Loop:
    def __init__(self, core, outbox: zmq.Socket, encoder: msgspec.msgpack.Encoder) -> None:
        self.core = core
        self.outbox = outbox
        self.encoder = encoder

    def send(self, message) -> None:
        self.outbox.send(self.encoder.encode(message))

    def handle(self, message: AddRequest | AbortRequests | TouchSession | CloseSession) -> None:
        if isinstance(message, TouchSession):
            self.core.touch_session(message.session_id, message.lease_s, message.retention)
            return
        if isinstance(message, CloseSession):
            self.core.close_session(message.session_id)
            return
        if isinstance(message, AbortRequests):
            outputs = [o for rid in message.request_ids if (o := self.core.abort(rid))]
            if outputs:
                self.send(StepOutputs(outputs, self.stats()))
            return
        try:
            self.core.add_request(message.request_id, message.prompt_ids, message.params,
                                  message.session, message.cache_salt)
        except InvalidRequestError as exc:
            self.send(RequestFailed(message.request_id, exc.message, exc.param, exc.code))

    def step(self) -> None:
        try:
            outputs = self.core.step()
        except TensorParallelError:
            raise  # not this step's fault: the group is broken (run_engine reports it)
        except Exception as exc:  # never let one step kill the loop: fail what was running
            logger.exception("engine step failed; failing the running requests")
            for request in list(self.core.scheduler.running) + list(self.core.scheduler.waiting):
                self.core.abort(request.request_id)
                self.send(RequestFailed(request.request_id, f"engine error: {exc}",
                                        server_error=True))
            if is_device_fatal(exc):
                raise DeviceFailure(f"the GPU reported an error the engine cannot recover "
                                    f"from, so it stops: {exc}") from exc
            return
        self.send(StepOutputs(outputs, self.stats()))

    def stats(self) -> EngineStats:
        sched = self.core.scheduler
        pins = sched.sessions
        spec = self.core.spec.stats if self.core.spec is not None else SpecStats()
        evicted = sched.cache.evicted_by_class
        host_tier = self.core.runner.host_tier
        return EngineStats(
            num_running=len(sched.running), num_waiting=len(sched.waiting),
            num_free_pages=sched.pool.num_free, num_cached_pages=sched.cache.num_cached_pages,
            num_total_pages=sched.pool.num_total,
            num_computed_tokens=sched.stats.num_computed_tokens,
            num_cached_tokens=sched.stats.num_cached_tokens,
            num_preemptions=sched.stats.num_preemptions,
            num_evicted_pages=sched.stats.num_evicted_pages,
            num_evicted_session_pages=sum(n for name, n in evicted.items() if name != "plain"),
            num_evicted_pages_by_class=dict(evicted),
            num_sessions=pins.num_live_sessions, num_host_sessions=pins.num_host_sessions,
            num_pinned_pages=pins.num_pinned_pages, num_host_pages=pins.num_host_pages,
            num_demotions=pins.stats.num_demotions, num_expired_leases=pins.stats.num_expired,
            num_prefetches=pins.stats.num_prefetches,
            num_prefetched_pages=pins.stats.num_prefetched_pages,
            prefetch_seconds=host_tier.total_prefetch_s,
            prefetch_seconds_buckets=list(host_tier.prefetch_buckets),
            num_spec_verify_steps=spec.num_verify_steps,
            num_spec_draft_tokens=spec.num_draft_tokens,
            num_spec_accepted_tokens=spec.num_accepted_tokens,
            num_kernel_builds=num_kernel_builds(),
            num_prefill_first_steps=sched.stats.num_prefill_first_steps,
            num_prefill_first_capped=sched.stats.num_prefill_first_capped,
            num_ahead_held_steps=self.core.pacer.held)
