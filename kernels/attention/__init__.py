"""Attention backends behind one interface, chosen by name."""

from __future__ import annotations

import importlib

from kernels.attention.base import AttentionBackend, AttentionBatch
from kernels.kv_cache import KVCache

_BACKENDS: dict[str, str] = {
    "torch": "kernels.attention.torch_ref:TorchAttention",
    "triton": "kernels.attention.triton_backend:TritonAttention",
    "flashinfer": "kernels.attention.flashinfer_backend:FlashInferAttention",
}


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(
    name: str, kv_cache: KVCache, num_q_heads: int, scale: float
) -> AttentionBackend:
    """Build the backend registered as ``name``.

    "auto" picks Triton on CUDA (FlashInfer there when Triton is missing), else the torch
    reference. Triton leads because its decode is faster at every shape measured
    (docs/benchmarks.md) and because FlashInfer's paged prefill failed on 30K-token agent prompts
    in B2 (an illegal memory access, not yet isolated) where Triton's extend kernel ran them.
    """
    if name == "auto":
        name = "torch"
        if kv_cache.device.type == "cuda":
            for candidate in ("triton", "flashinfer"):
                if _backend_class(candidate).available():
                    name = candidate
                    break
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {available_backends()}")
    return _backend_class(name)(kv_cache, num_q_heads, scale)


def _backend_class(name: str) -> type[AttentionBackend]:
    module_name, cls_name = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


__all__ = ["AttentionBackend", "AttentionBatch", "KVCache", "available_backends", "create_backend"]
