"""Compile FlashInfer's JIT kernels ahead of a test or benchmark run, several modules at once.

Each (wrapper, head_dim) is one JIT module; building them in parallel processes (each runs its
own ninja) cuts the first-run wait on a fresh host. Modules land in
``$FLASHINFER_WORKSPACE_BASE/.cache/flashinfer``.

    python benchmarks/flashinfer_warmup.py [--head-dims 64 128] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch


def build(kind: str, head_dim: int, dtype_name: str) -> float:
    from kernels.attention import AttentionBatch, create_backend
    from kernels.kv_cache import KVCache

    start = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    cache = KVCache(1, 4, 16, 2, head_dim, dtype, "cuda")
    backend = create_backend("flashinfer", cache, 4, head_dim**-0.5)
    q_len = 1 if kind == "decode" else 3
    batch = AttentionBatch([q_len], [5], [[2]], torch.arange(5 - q_len, 5, device="cuda") + 32)
    backend.plan(batch)
    q = torch.randn(q_len, 4, head_dim, dtype=dtype, device="cuda")
    k = torch.randn(q_len, 2, head_dim, dtype=dtype, device="cuda")
    backend.forward(0, q, k, k.clone())
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _job(args: tuple[str, int, str]) -> str:
    kind, head_dim, dtype_name = args
    return f"{kind} head_dim={head_dim}: {build(kind, head_dim, dtype_name):.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    jobs = [(kind, hd, args.dtype) for hd in args.head_dims for kind in ("prefill", "decode")]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        for line in pool.imap_unordered(_job, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
