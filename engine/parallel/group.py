"""One tensor-parallel group: this process's rank and the collectives the sharded model calls.

Two ``torch.distributed`` groups over the same ranks:
- ``device_group``: NCCL on CUDA, gloo on CPU. The model's all-reduces and all-gathers run here,
  on the current stream, without host synchronisation (NCCL collectives are captured by the
  decode CUDA graphs).
- ``cpu_group``: gloo. Rank 0's step messages and the start-up agreement; its timeout is
  effectively infinite because idle ranks wait on it for as long as the server is idle.

A collective that fails (on gloo: a peer's socket closed because it died) raises
``TensorParallelError`` with the best explanation at hand (``explain``), never a bare gloo error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

# torch >= 2.12 renames all_gather_into_tensor; the GPU hosts run 2.11.
logger = logging.getLogger(__name__)

_all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class TensorParallelError(RuntimeError):
    """A rank died, hung up or disagrees: the engine cannot go on (never a request's fault)."""


class TPGroup:
    def __init__(self, rank: int, world_size: int, device: torch.device,
                 device_group: dist.ProcessGroup, cpu_group: dist.ProcessGroup) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.device_group = device_group
        self.cpu_group = cpu_group
        # Why a collective failed, if anyone knows (rank 0 watching its local workers does).
        self.explain: Callable[[BaseException], str] = self.generic_failure
        self._one_shot: torch.Tensor | None = None  # symmetric-memory buffer (enable_one_shot)

    def generic_failure(self, exc: BaseException) -> str:
        return (f"tensor-parallel rank {self.rank}: a collective failed, another rank has "
                f"probably died ({exc})")

    def _fail(self, exc: BaseException) -> TensorParallelError:
        return TensorParallelError(self.explain(exc))

    def enable_one_shot(self, max_numel: int, dtype: torch.dtype) -> bool:
        """Route all-reduces of at most ``max_numel`` elements of ``dtype`` (decode steps)
        through torch symmetric memory's one-shot all-reduce: each rank reads its peers'
        buffers over NVLink, one kernel instead of NCCL's ~16 us protocol per call. Collective:
        every rank calls it, and all use it only if it works (a test sum matches NCCL's) on
        every rank. Returns whether it is on."""
        ok = False
        if self.device.type == "cuda":
            try:
                ok = self._try_one_shot(max_numel, dtype)
            except Exception as exc:  # unsupported here: NCCL serves every size
                logger.warning("rank %d: one-shot all-reduce unavailable (%r)", self.rank, exc)
                self._one_shot = None
        if not all(self.all_gather_object(ok)):
            self._one_shot = None
        return self.one_shot_enabled

    @property
    def one_shot_enabled(self) -> bool:
        return self._one_shot is not None

    def _try_one_shot(self, max_numel: int, dtype: torch.dtype) -> bool:
        import torch.distributed._symmetric_memory as symm_mem

        buffer = symm_mem.empty(max_numel, dtype=dtype, device=self.device)
        symm_mem.rendezvous(buffer, self.device_group.group_name)
        self._one_shot = buffer
        probe = torch.randn(max(8, max_numel // 3 // 8 * 8), device=self.device).to(dtype)
        expected = probe.clone()
        dist.all_reduce(expected, group=self.device_group)
        got = self.all_reduce(probe.clone())
        torch.cuda.synchronize(self.device)
        return bool(torch.allclose(got.float(), expected.float(), rtol=1e-2, atol=1e-2))

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place; returns ``x``."""
        buffer = self._one_shot
        try:
            if (buffer is not None and x.dtype == buffer.dtype and x.numel() <= buffer.numel()
                    and x.numel() * x.element_size() % 16 == 0  # the kernel's vector width
                    and x.is_contiguous() and x.device == buffer.device):
                # Copies x into this rank's symmetric buffer, sums every rank's, writes x.
                torch.ops.symm_mem.one_shot_all_reduce_copy_out(
                    buffer[: x.numel()].view(x.shape), x, "sum",
                    self.device_group.group_name, out=x)
            else:
                dist.all_reduce(x, group=self.device_group)
        except RuntimeError as exc:
            raise self._fail(exc) from exc
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """(n, ...) on every rank -> (world_size * n, ...), rank-major, on every rank."""
        out = torch.empty((self.world_size * x.shape[0], *x.shape[1:]), dtype=x.dtype,
                          device=x.device)
        try:
            _all_gather_into(out, x.contiguous(), group=self.device_group)
        except RuntimeError as exc:
            raise self._fail(exc) from exc
        return out

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``x`` into every rank's ``x`` (device group, no host sync on NCCL)."""
        return self._broadcast(x, src, self.device_group)

    def broadcast_cpu(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Like ``broadcast`` for a CPU tensor, over the gloo group (blocks until it arrives)."""
        return self._broadcast(x, src, self.cpu_group)

    def _broadcast(self, x: torch.Tensor, src: int, group) -> torch.Tensor:
        try:
            dist.broadcast(x, src, group=group)
        except RuntimeError as exc:
            raise self._fail(exc) from exc
        return x

    def all_gather_object(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable), in rank order, over the gloo group."""
        out: list = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.cpu_group)
        except RuntimeError as exc:
            raise self._fail(exc) from exc
        return out
