"""A rank's tensor-parallel state: the group, rank 0's workers and step channel, start-up checks.

``setup_tensor_parallel`` joins (or, as a lone rank 0, creates) the group before the model is
built; the runner then asks it to agree on the KV pool, and rank 0 sends every step through it.
One group per process: ``torch.distributed`` has a single default group.

Failure handling. Rank 0 polls its local workers before each step and watches them from a
thread; the thread calls ``on_failure`` (the engine process reports the error to the server and
exits; by default rank 0 on CUDA exits, because an NCCL collective waits forever for a dead
peer, while on CPU gloo raises in the waiting rank). A failed collective raises
``TensorParallelError`` naming the dead rank when rank 0 knows it.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from engine.config import EngineConfig
from engine.default_model import resolve_model
from engine.host_tier import HostTier
from engine.parallel.channel import BroadcastHostTier, RunStep, StepChannel, StopWorker
from engine.parallel.group import TensorParallelError, TPGroup
from engine.parallel.launch import LocalWorkers, RankEnv, launched_env, watch_parent
from engine.parallel.plan import ShardPlan, check_shardable
from engine.step_batch import StepBatch
from kernels.kv_cache import KVCache

logger = logging.getLogger(__name__)

_COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # one step's collectives; start-up rendezvous
_IDLE_TIMEOUT = timedelta(days=3650)  # workers wait for the next step as long as rank 0 idles
_START_TIMEOUT_S = 600.0  # for spawned workers to reach the rendezvous
_active: TensorParallel | None = None


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """What each rank reports at start-up; all but the last three fields must agree."""

    model_hash: str  # the model config, minus path-like keys
    engine_hash: str  # the EngineConfig, minus the model path
    dtype: str
    page_size: int
    num_pages: int  # KV pages this rank could hold
    free_bytes: int  # device memory free after the weights (0 on CPU)
    host: str


def agree(infos: list[RankInfo]) -> int:
    """The KV pages every rank can hold (the minimum); ``TensorParallelError`` naming what
    differs when the ranks were not started alike."""
    first = infos[0]
    for rank, info in enumerate(infos[1:], start=1):
        for field in ("model_hash", "engine_hash", "dtype", "page_size"):
            if getattr(info, field) != getattr(first, field):
                raise TensorParallelError(
                    f"tensor-parallel ranks disagree on {field}: rank 0 has "
                    f"{getattr(first, field)!r}, rank {rank} ({info.host}) has "
                    f"{getattr(info, field)!r}; start every rank with the same model and flags")
    free = [i.free_bytes for i in infos]
    if max(free) > 0 and min(free) < 0.9 * max(free):
        logger.warning("free device memory differs across ranks (%s GiB): the KV pool is "
                       "sized by the smallest", [round(f / 2**30, 1) for f in free])
    return min(i.num_pages for i in infos)


def _hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TensorParallel:
    """This process's rank: the collectives (``group``), rank 0's step hand-off (``channel``)
    and, for a single-host rank 0, the worker processes it started (``workers``)."""

    def __init__(self, group: TPGroup, workers: LocalWorkers | None,
                 num_threads: int) -> None:
        self.group = group
        self.workers = workers
        self.channel = StepChannel(group)
        self.closed = False
        self._num_threads = num_threads  # torch's CPU threads before the group, restored after
        # Called from the watch thread when a local worker exits unasked (rank 0 only).
        self.on_failure: Callable[[str], None] = self._default_on_failure
        if workers is not None:
            group.explain = self._explain
            workers.watch(lambda why: self.on_failure(why))

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def world_size(self) -> int:
        return self.group.world_size

    @property
    def device(self) -> torch.device:
        return self.group.device

    @property
    def is_driver(self) -> bool:
        """Rank 0: schedules, samples and sends each step to the others."""
        return self.group.rank == 0

    def plan(self, hf_config: Any) -> ShardPlan:
        return ShardPlan.for_config(hf_config, self.rank, self.world_size)

    # ------------------------------------------------------------ start-up
    def agree_num_pages(self, config: EngineConfig, hf_config: Any, dtype: torch.dtype,
                        num_pages: int) -> int:
        """Exchange ``RankInfo`` with every rank; the common KV pool size."""
        model = {k: v for k, v in hf_config.to_dict().items()
                 if not k.startswith("_") and k != "transformers_version"}
        engine = {k: v for k, v in dataclasses.asdict(config).items() if k != "model"}
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0
        info = RankInfo(_hash(model), _hash(engine), str(dtype), config.page_size, num_pages,
                        free, os.uname().nodename)
        agreed = agree(self.group.all_gather_object(info))
        if agreed < num_pages:
            logger.info("rank %d: %d KV pages (the smallest rank's), %d would fit here",
                        self.rank, agreed, num_pages)
        return agreed

    def host_tier(self, kv_cache: KVCache) -> HostTier:
        return BroadcastHostTier(kv_cache, self.channel) if self.is_driver else HostTier(kv_cache)

    # ------------------------------------------------------------ per step (rank 0)
    def send_step(self, batch: StepBatch) -> None:
        """Hand ``batch`` to the other ranks; they run the same forward."""
        if self.workers is not None and (why := self.workers.failure()) is not None:
            raise TensorParallelError(why)
        self.channel.send(RunStep(batch))

    def share_tokens(self, values: torch.Tensor | None, num: int) -> torch.Tensor:
        """Rank 0's ``values`` ((num,) int64 on its device: tokens it sampled and never sent to
        the host) on every rank, through the device group; others pass None."""
        if self.is_driver:
            assert values is not None and values.dtype == torch.int64, "int64 tokens expected"
            return self.group.broadcast(values.contiguous())
        return self.group.broadcast(torch.empty(num, dtype=torch.int64, device=self.device))

    # ------------------------------------------------------------ failure and shutdown
    def _explain(self, exc: BaseException) -> str:
        why = self.workers.wait_failure(2.0) if self.workers is not None else None
        return why or self.group.generic_failure(exc)

    def _default_on_failure(self, why: str) -> None:
        logger.critical("%s", why)
        if self.device.type == "cuda":  # NCCL would wait for the dead rank forever
            self.workers.kill()
            os._exit(1)

    def close(self, abort: bool = False) -> None:
        """Stop the other ranks (rank 0) and leave the group; idempotent."""
        global _active
        if self.closed:
            return
        self.closed = True
        if self.workers is not None:
            self.workers.expect_exit()
        if self.is_driver and not abort:
            try:
                self.channel.send(StopWorker())
            except (TensorParallelError, RuntimeError):
                abort = True
        if self.workers is not None and abort:
            self.workers.kill()
        # Every rank leaves the group at the same time (the workers do on StopWorker): NCCL's
        # tear-down waits on its peers, so rank 0 must not wait for the workers to exit first.
        _destroy_group()
        if self.workers is not None and not abort:
            self.workers.stop()
        torch.set_num_threads(self._num_threads)
        if _active is self:
            _active = None


def _destroy_group(timeout_s: float = 10.0) -> None:
    """Leave the process group, bounded: NCCL's tear-down can block for good once a peer has
    exited; a rank that is shutting down moves on without it."""

    def destroy() -> None:
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError, AssertionError):
            pass

    thread = threading.Thread(target=destroy, name="tp-destroy", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        logger.warning("tensor-parallel group tear-down did not return in %.0f s; leaving it",
                       timeout_s)


def close_tensor_parallel(abort: bool = False) -> None:
    """Close this process's group, if any (e.g. after an engine failed to start)."""
    if _active is not None:
        _active.close(abort=abort)


def _rank_device(base: torch.device, local_rank: int) -> torch.device:
    if base.type != "cuda":
        return base
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"tensor-parallel local rank {local_rank} needs GPU {local_rank}, but "
                         f"this host shows {torch.cuda.device_count()}")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _spawn_workers(config: EngineConfig) -> tuple[dist.TCPStore, LocalWorkers]:
    """Rank 0 without a launcher: open the rendezvous on a free port, start ranks 1..N-1 and
    wait until each has reached it (failing fast when one exits first)."""
    from engine.loader import load_config

    path = resolve_model(config.model)  # workers get this path: no race to convert a model
    hf = load_config(path)  # refuse an unsplittable model before starting any process
    check_shardable(config.tensor_parallel_size, hf.num_attention_heads,
                    hf.num_key_value_heads, hf.intermediate_size)
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=_COLLECTIVE_TIMEOUT,
                          wait_for_workers=False)
    workers = LocalWorkers(config.replace(model=path), store.port)
    keys = [f"ready/{rank}" for rank in workers.procs]
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not store.check(keys):
        if (why := workers.failure()) is not None:
            workers.kill()
            raise TensorParallelError(f"{why} during start-up")
        if time.monotonic() > deadline:
            workers.kill()
            raise TensorParallelError(f"tensor-parallel workers did not start within "
                                      f"{_START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return store, workers


def _join(env: RankEnv, backend: str) -> None:
    """A worker's (or a launched rank 0's) way into the default group."""
    if env.spawned_by is None:  # a launcher's environment: its rendezvous, its store
        dist.init_process_group(backend, init_method="env://", rank=env.rank,
                                world_size=env.world_size, timeout=_COLLECTIVE_TIMEOUT)
        return
    watch_parent(env.spawned_by)
    store = dist.TCPStore(env.master_addr, env.master_port, None, False,
                          timeout=_COLLECTIVE_TIMEOUT)
    store.set(f"ready/{env.rank}", "1")
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size,
                            timeout=_COLLECTIVE_TIMEOUT)


def setup_tensor_parallel(config: EngineConfig, base_device: torch.device) -> TensorParallel | None:
    """This process's rank of a ``config.tensor_parallel_size``-way group (None for 1).

    ``base_device``: the device the engine resolved (cuda or cpu); on CUDA each rank takes GPU
    ``LOCAL_RANK``. Without launcher variables this process is rank 0 and spawns the others.
    """
    global _active
    world_size = config.tensor_parallel_size
    if world_size == 1:
        return None
    if _active is not None:
        logger.warning("closing this process's previous tensor-parallel group (one at a time)")
        _active.close()
    env = launched_env()
    if env is not None and env.world_size != world_size:
        raise ValueError(f"WORLD_SIZE={env.world_size} but tensor_parallel_size={world_size}")
    rank, local_rank = (env.rank, env.local_rank) if env is not None else (0, 0)
    device = _rank_device(base_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    workers = None
    if env is None:
        if device.type == "cuda" and world_size > torch.cuda.device_count():
            raise ValueError(f"tensor_parallel_size {world_size} needs {world_size} GPUs; "
                             f"this host shows {torch.cuda.device_count()}")
        store, workers = _spawn_workers(config)
    try:
        if workers is not None:
            dist.init_process_group(backend, store=store, rank=0, world_size=world_size,
                                    timeout=_COLLECTIVE_TIMEOUT)
        else:
            _join(env, backend)
        cpu_group = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT)
        group = TPGroup(rank, world_size, device, dist.group.WORLD, cpu_group)
        if device.type == "cuda":  # the NCCL communicator now, never inside a graph capture
            group.all_reduce(torch.zeros(1, device=device))
            torch.cuda.synchronize(device)
    except BaseException:
        if workers is not None:
            workers.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    num_threads = torch.get_num_threads()
    if device.type == "cpu":  # gloo ranks share the host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    _active = TensorParallel(group, workers, num_threads)
    atexit.register(_active.close)
    logger.info("tensor-parallel rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return _active
