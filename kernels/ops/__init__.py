"""Fused elementwise/normalisation ops, each a Triton kernel beside its torch reference.

Every public op runs Triton on CUDA tensors and the reference elsewhere (CPU, or no Triton);
``*_triton`` and ``*_ref`` are exported for tests and benchmarks.
"""

from kernels.ops.gemv import gemv_triton, linear, set_gemv
from kernels.ops.kv_store import kv_store, kv_store_ref, kv_store_triton
from kernels.ops.rmsnorm import rmsnorm, rmsnorm_ref, rmsnorm_triton
from kernels.ops.rope import apply_rope, rope_ref, rope_triton
from kernels.ops.silu_mul import silu_mul, silu_mul_ref, silu_mul_triton

__all__ = [
    "apply_rope",
    "gemv_triton",
    "kv_store",
    "kv_store_ref",
    "kv_store_triton",
    "linear",
    "rmsnorm",
    "rmsnorm_ref",
    "rmsnorm_triton",
    "rope_ref",
    "rope_triton",
    "set_gemv",
    "silu_mul",
    "silu_mul_ref",
    "silu_mul_triton",
]
