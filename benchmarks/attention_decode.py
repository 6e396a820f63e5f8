"""Paged decode attention, one layer: Triton vs FlashInfer, KV bandwidth achieved (GPU).

Qwen3-8B's attention shape (32 query / 8 KV heads, head_dim 128, bf16, page 16). Each row
reads ``kv_len * 2 * 8 * 128 * 2`` bytes of KV; GB/s = those bytes / median time of one
``forward`` (store + attention), timed with CUDA events after warm-up. Last line is JSON.

    python benchmarks/attention_decode.py [--cases 1x32768 32x2048 64x4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess

import torch

from kernels.attention import AttentionBatch, create_backend
from kernels.kv_cache import KVCache

HQ, HKV, HEAD_DIM, PAGE = 32, 8, 128, 16


def bench(name: str, batch_size: int, kv_len: int) -> float:
    pages_per_seq = -(-kv_len // PAGE)
    cache = KVCache(1, batch_size * pages_per_seq, PAGE, HKV, HEAD_DIM, torch.bfloat16, "cuda")
    cache.k_pages[0].normal_()
    cache.v_pages[0].normal_()
    table = [list(range(i * pages_per_seq, (i + 1) * pages_per_seq)) for i in range(batch_size)]
    slots = torch.tensor([t[(kv_len - 1) // PAGE] * PAGE + (kv_len - 1) % PAGE for t in table],
                         device="cuda")
    batch = AttentionBatch([1] * batch_size, [kv_len] * batch_size, table, slots)
    backend = create_backend(name, cache, HQ, HEAD_DIM**-0.5)
    backend.plan(batch)
    q = torch.randn(batch_size, HQ, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch_size, HKV, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    import triton.testing

    ms = triton.testing.do_bench(lambda: backend.forward(0, q, k, k), warmup=25, rep=200,
                                 return_mode="median")
    kv_bytes = batch_size * kv_len * 2 * HKV * HEAD_DIM * 2
    return kv_bytes / (ms * 1e-3) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=["1x32768", "32x2048", "64x4096"])
    parser.add_argument("--backends", nargs="+", default=["triton", "flashinfer"])
    args = parser.parse_args()
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"device={torch.cuda.get_device_name()} commit={commit}")
    results = {}
    print(f"{'batch x kv_len':>16} " + " ".join(f"{b + ' GB/s':>16}" for b in args.backends))
    for case in args.cases:
        batch_size, kv_len = (int(x) for x in case.split("x"))
        row = {b: bench(b, batch_size, kv_len) for b in args.backends}
        results[case] = row
        print(f"{case:>16} " + " ".join(f"{row[b]:16.0f}" for b in args.backends))
    print(json.dumps({"device": torch.cuda.get_device_name(), "commit": commit,
                      "kv_gbps": results}))


if __name__ == "__main__":
    main()
