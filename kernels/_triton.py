"""Optional Triton import shared by the kernel files.

CPU-only installs may lack Triton; kernel modules still import (their ``@jit`` functions stay
plain Python and are never launched) and every public op falls back to its torch reference.
``TRITON_INTERPRET=1`` must be set before a kernel module is imported for its kernels to run on
CPU tensors through Triton's interpreter (how the CPU tests exercise them).
"""

from __future__ import annotations

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


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
