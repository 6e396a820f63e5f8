"""Attention backends behind one interface, chosen by name."""

from __future__ import annotations

from kernels.attention.base import AttentionBackend, AttentionBatch
from kernels.kv_cache import KVCache

_BACKENDS: dict[str, str] = {
    "torch": "kernels.attention.torch_ref:TorchAttention",
}


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(
    name: str, kv_cache: KVCache, num_q_heads: int, scale: float
) -> AttentionBackend:
    """Build the backend registered as ``name`` ("auto" picks the fastest one that runs here)."""
    if name == "auto":
        name = "torch"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {available_backends()}")
    module_name, cls_name = _BACKENDS[name].split(":")
    import importlib

    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(kv_cache, num_q_heads, scale)


__all__ = ["AttentionBackend", "AttentionBatch", "KVCache", "available_backends", "create_backend"]
