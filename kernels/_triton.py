"""Optional Triton import shared by the kernel files.

CPU-only installs may lack Triton; kernel modules still import (their ``@jit`` functions stay
plain Python and are never launched) and every public op falls back to its torch reference.
``TRITON_INTERPRET=1`` must be set before a kernel module is imported for its kernels to run on
CPU tensors through Triton's interpreter (how the CPU tests exercise them).

Programmatic dependent launch (PDL, Hopper and later; ``set_pdl``): a kernel launched with it may
start while the kernel before it on the stream is still finishing. Every kernel that takes
``USE_PDL`` calls ``pdl_wait`` before it reads anything an earlier kernel may have written and
before it writes anything (only its weights may be read earlier: no kernel writes them), so the
overlap is the launch, the prologue and the weight prefetch, never a data race. Kernels launched
the ordinary way (cuBLAS, torch) still wait for everything before them.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False

    class _Stub:
        """Stands in for ``triton.language`` so kernel signatures still evaluate."""

        def __getattr__(self, name: str) -> Any:
            return self

    triton = None  # type: ignore[assignment]
    tl = _Stub()  # type: ignore[assignment]

logger = logging.getLogger(__name__)


def jit(fn=None, **kwargs):
    """``triton.jit`` (same keyword arguments) when Triton is installed, else the undecorated
    function, which is never launched."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    return triton.jit(fn, **kwargs) if HAS_TRITON else fn


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``t``: a CUDA tensor, or any tensor when interpreting."""
    return HAS_TRITON and (t.is_cuda or interpreting())


_PDL = False  # set_pdl; the engine sets it from EngineConfig.pdl


def set_pdl(enabled: bool) -> bool:
    """Launch the kernels that support it with PDL (SM90+ CUDA only); returns the previous
    setting. Read at each launch, and so frozen into captured graphs."""
    global _PDL
    previous, _PDL = _PDL, enabled
    return previous


def pdl_args(t: torch.Tensor) -> dict[str, bool]:
    """Launch keywords for a ``USE_PDL`` kernel running on ``t``'s device."""
    if _PDL and HAS_TRITON and t.is_cuda and not interpreting() and _sm90(t.device.index):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@functools.cache
def _sm90(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Wait until the kernel before this one has finished and its writes are visible, then let
    the next kernel launch (it waits the same way). No-op without ``USE_PDL``."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@jit
def l2_prefetch(BASE, numel, program, LINES: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for lines ``program * LINES ..`` (``LINE`` elements each) of ``BASE[:numel]``
    and go on: no registers held, nothing waited for. For weights a later kernel reads while
    this one is latency-bound (inline PTX: CUDA only, never the interpreter)."""
    offs = (program.to(tl.int64) * LINES + tl.arange(0, LINES)) * LINE
    ptrs = BASE + tl.minimum(offs, numel - 1)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l",
                              [ptrs.to(tl.int64)], dtype=tl.int32, is_pure=False, pack=1)


def pack_aligned(lists: list[list[int]], dtype: torch.dtype, device: torch.device | str,
                 pin: bool = False) -> list[torch.Tensor]:
    """``lists`` as views of one tensor, copied to ``device`` at once, each view starting on a
    16-byte boundary. Triton specialises pointer arguments on 16-byte alignment, so views at
    batch-dependent offsets would make it compile a new kernel variant (a stall of about a
    second) whenever a new combination of alignments shows up mid-serve. ``pin``: copy
    asynchronously from pinned host memory."""
    per = 16 // dtype.itemsize  # elements per 16 bytes
    flat: list[int] = []
    offsets = []
    for values in lists:
        offsets.append(len(flat))
        flat.extend(values)
        flat.extend([0] * (-len(flat) % per))
    host = torch.tensor(flat, dtype=dtype)
    if pin and torch.device(device).type == "cuda":
        packed = host.pin_memory().to(device, non_blocking=True)
    else:
        packed = host.to(device)
    return [packed[o:o + len(values)] for o, values in zip(offsets, lists)]


_BUILDS: list[str] = []  # what track_kernel_builds saw built: Triton's repr of each variant


def track_kernel_builds() -> bool:
    """Count every Triton kernel variant this process builds (a JIT compile, or a load from
    Triton's disk cache: either way a new specialisation). Once serving, each one is a stall of
    up to about a second, so the count goes to ``/metrics``. Chains to a hook already installed;
    idempotent. Returns whether this Triton offers the hook (3.4 and later)."""
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_post_compile_hook"):
        return False
    previous = runtime.jit_post_compile_hook
    if getattr(previous, "counts_kernel_builds", False):
        return True

    def hook(**kwargs: Any) -> Any:
        fn = kwargs.get("fn")
        _BUILDS.append(str(kwargs.get("repr") or getattr(fn, "name", "?")))
        logger.debug("built Triton kernel variant %s (%d in this process)", _BUILDS[-1],
                     len(_BUILDS))
        return previous(**kwargs) if previous is not None else None

    hook.counts_kernel_builds = True  # type: ignore[attr-defined]
    runtime.jit_post_compile_hook = hook
    return True


def num_kernel_builds() -> int:
    """Triton kernel variants built in this process since ``track_kernel_builds``."""
    return len(_BUILDS)


def built_kernels() -> list[str]:
    """Triton's description (name, launch options, argument specialisation) of each variant
    built since ``track_kernel_builds``, oldest first."""
    return list(_BUILDS)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
