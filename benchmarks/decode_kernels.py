"""The kernels of one decode step, each alternative timed the way the engine runs it (GPU).

Qwen3-8B's shapes, bf16. Every variant is first checked against a float32 reference on random
inputs, then captured as a CUDA graph of all 36 layers (a separate weight / KV cache per layer,
so nothing is served from L2) and replayed; the time is the median replay over layers.

- linear: cuBLAS (``F.linear``) against the Triton GEMV (``kernels.ops.gemv``) in several
  tile configurations, for 1, 2 and 4 rows, as GB/s of weight read;
- attention: the decode graphs' attention (``engine.graph_attention``): FlashInfer's CUDA-graph
  decode (CUDA cores, and its tensor-core variant) against our Triton split-KV decode in CSR
  mode, at several split counts and block sizes, in microseconds per layer (KV store
  included).

    python benchmarks/decode_kernels.py [--rows 1 2 4] [--attention 1x640 8x640 32x2048]

Last line: JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cuda_graphs import padded_kv_layout  # noqa: E402
from engine.graph_attention import (  # noqa: E402
    FlashInferGraphAttention,
    TritonGraphAttention,
    triton_graph_splits,
)
from kernels._triton import set_pdl  # noqa: E402
from kernels.attention import AttentionBatch, create_backend  # noqa: E402
from kernels.kv_cache import KVCache  # noqa: E402
from kernels.ops.gemv import gemv_triton  # noqa: E402

LAYERS, HIDDEN, INTER, HQ, HKV, HEAD_DIM, PAGE = 36, 4096, 12288, 32, 8, 128, 16
LINEARS = {  # name: (out_features, in_features)
    "qkv": ((HQ + 2 * HKV) * HEAD_DIM, HIDDEN),
    "o": (HIDDEN, HQ * HEAD_DIM),
    "gate_up": (2 * INTER, HIDDEN),
    "down": (HIDDEN, INTER),
}
GEMV_CONFIGS = [(4, 512, 4), (8, 256, 4), (8, 512, 4), (8, 1024, 8), (16, 256, 4),
                (16, 512, 8), (32, 256, 8), (4, 1024, 4)]


def graph_ms(body: Callable[[], object], reps: int = 15) -> float:
    """Median ms of one replay of a CUDA graph of ``body``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def _layers_ms(fn: Callable, x: torch.Tensor, weights: list[torch.Tensor]) -> float:
    return graph_ms(lambda: [fn(x, w) for w in weights])


def bench_linears(rows_list: list[int], configs: list[tuple[int, int, int]]) -> dict:
    results: dict = {}
    for name, (n, k) in LINEARS.items():
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
                   for _ in range(LAYERS)]
        nbytes = LAYERS * n * k * 2
        for m in rows_list:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ weights[0].float().t()
            row = {"cublas": nbytes / _layers_ms(F.linear, x, weights) / 1e6,
                   "cublas_err": rel_err(F.linear(x, weights[0]), ref)}
            for cfg in configs:
                key = "triton_" + "x".join(map(str, cfg))
                try:
                    err = rel_err(gemv_triton(x, weights[0], config=cfg), ref)
                    assert err < 1e-2, f"relative error {err:.2e}"
                    fn = lambda x, w, c=cfg: gemv_triton(x, w, config=c)  # noqa: E731
                    row[key] = nbytes / _layers_ms(fn, x, weights) / 1e6
                except Exception as exc:  # one bad tile config must not hide the others
                    row[key] = f"failed: {exc!r}"[:200]
            best = max((v, key) for key, v in row.items()
                       if key.startswith("triton") and isinstance(v, float))
            # The best tile again with programmatic dependent launch: each GEMV is launched
            # while the one before finishes and waits for it in the kernel.
            cfg = tuple(int(v) for v in best[1].removeprefix("triton_").split("x"))
            previous = set_pdl(True)
            try:
                fn = lambda x, w, c=cfg: gemv_triton(x, w, config=c)  # noqa: E731
                row["triton_pdl"] = nbytes / _layers_ms(fn, x, weights) / 1e6
            finally:
                set_pdl(previous)
            print(f"{name:>8} m={m}: cuBLAS {row['cublas']:7.0f} GB/s, best Triton {best[0]:7.0f}"
                  f" GB/s ({best[1]}), with PDL {row['triton_pdl']:7.0f}", flush=True)
            results[f"{name}_m{m}"] = row
        weights.clear()
        torch.cuda.empty_cache()
    return results


def _attention_setup(batch: int, ctx: int):
    pages_per_seq = -(-ctx // PAGE)
    num_pages = batch * pages_per_seq + 1
    cache = KVCache(LAYERS, num_pages, PAGE, HKV, HEAD_DIM, torch.bfloat16, "cuda")
    for pages in (*cache.k_pages, *cache.v_pages):
        pages.normal_()
    order = (torch.randperm(num_pages - 1) + 1).tolist()
    table = [order[i * pages_per_seq:(i + 1) * pages_per_seq] for i in range(batch)]
    kv_lens = [ctx] * batch
    slots = torch.tensor([t[(ctx - 1) // PAGE] * PAGE + (ctx - 1) % PAGE for t in table],
                         device="cuda")
    indptr, indices, last = padded_kv_layout(batch, kv_lens, table, PAGE)
    q = torch.randn(batch, HQ, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, HKV, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    return cache, table, kv_lens, slots, (indptr, indices, last), q, k


def _reference(cache: KVCache, table, kv_lens, slots: torch.Tensor, q: torch.Tensor,
               k: torch.Tensor) -> torch.Tensor:
    """The torch reference backend in float32 on a copy of layer 0 (storing the same k/v)."""
    ref_cache = KVCache(1, cache.num_pages, PAGE, HKV, HEAD_DIM, torch.float32, "cuda")
    ref_cache.k_pages[0].copy_(cache.k_pages[0])
    ref_cache.v_pages[0].copy_(cache.v_pages[0])
    ref = create_backend("torch", ref_cache, HQ, HEAD_DIM**-0.5)
    ref.plan(AttentionBatch([1] * len(table), kv_lens, table, slots))
    return ref.forward(0, q.float(), k.float(), k.float())


def bench_attention(batch: int, ctx: int, tile_grid: bool = False) -> dict:
    cache, table, kv_lens, slots, (indptr, indices, last), q, k = _attention_setup(batch, ctx)
    indices_gpu = torch.tensor(indices, dtype=torch.int32, device="cuda")
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    variants: dict[str, Callable[[], object]] = {}
    workspace = torch.zeros(128 << 20, dtype=torch.uint8, device="cuda")
    for tensor_cores in (False, True):
        fi = FlashInferGraphAttention(cache, HQ, HEAD_DIM**-0.5, slots,
                                      torch.zeros(len(indices), dtype=torch.int32, device="cuda"),
                                      workspace, tensor_cores=tensor_cores)
        fi.plan_step(torch.tensor(indptr, dtype=torch.int32).pin_memory(), indices_gpu,
                     torch.tensor(last, dtype=torch.int32).pin_memory())
        variants["flashinfer" + ("_tc" if tensor_cores else "")] = fi
    indptr_gpu = torch.tensor(indptr, device="cuda")
    last_gpu = torch.tensor(last, device="cuda")
    auto = triton_graph_splits(batch, HKV, num_sms)
    if tile_grid:  # the rule's splits, a half and a quarter of them, about 4 and 8 programs
        # per SM, and 1, 4, 8 (short contexts: no merge, or few splits) x (block_n, warps, stages)
        split_set = {auto, max(1, auto // 2), max(1, auto // 4), 1, 4, 8,
                     *(max(1, min(64, per * num_sms // (batch * HKV))) for per in (4, 8))}
        tiles = [(64, 4, 2), (64, 4, 3), (128, 8, 3), (32, 4, 2), (32, 4, 3)]
    else:
        split_set, tiles = {auto, 4, 8, 16, 32}, [(32, 4, 2), (64, 4, 2)]
    for splits in sorted(split_set):
        for block_n, warps, stages in tiles:
            name = f"triton_s{splits}_n{block_n}_w{warps}_st{stages}"
            variants[name + ("_auto" if splits == auto else "")] = TritonGraphAttention(
                cache, HQ, HEAD_DIM**-0.5, slots, indices_gpu, indptr_gpu, last_gpu, splits,
                block_n=block_n, num_warps=warps, num_stages=stages)
    results: dict = {}
    ref = None
    for name, attn in variants.items():
        try:
            out = attn.forward(0, q, k, k)
            if ref is None:
                ref = _reference(cache, table, kv_lens, slots, q, k)
            err = rel_err(out, ref)
            assert err < 1e-2, f"relative error {err:.2e}"
            ms = graph_ms(lambda a=attn: [a.forward(i, q, k, k) for i in range(LAYERS)])
            results[name] = dict(us_per_layer=ms * 1e3 / LAYERS, rel_err=err)
        except Exception as exc:
            results[name] = dict(error=f"{exc!r}"[:300])
    ok = {n: r["us_per_layer"] for n, r in results.items() if "us_per_layer" in r}
    best = min(ok, key=ok.get) if ok else None
    summary = ", ".join(f"{n} {v:.1f}" for n, v in sorted(ok.items(), key=lambda kv: kv[1]))
    kv_gb = batch * ctx * HKV * HEAD_DIM * 2 * 2 / 1e9  # K and V, bf16, one layer
    rate = f"; best {kv_gb / ok[best] * 1e6:.0f} GB/s of KV" if best else ""
    print(f"attention {batch}x{ctx}: us/layer {summary}; best {best}{rate}", flush=True)
    del cache
    torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--attention", nargs="+", default=["1x640", "8x640", "1x4096",
                                                           "32x2048", "64x640"])
    parser.add_argument("--skip-linears", action="store_true")
    parser.add_argument("--tile-grid", action="store_true",
                        help="attention: splits per SM x tile shapes and pipeline stages")
    parser.add_argument("--pdl", action="store_true",
                        help="attention kernels launch with PDL, as the engine's graphs do")
    args = parser.parse_args()
    set_pdl(args.pdl)
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    result: dict = {"device": torch.cuda.get_device_name()}
    for case in args.attention:
        batch, ctx = (int(v) for v in case.split("x"))
        result[f"attention_{case}"] = bench_attention(batch, ctx, args.tile_grid)
    if not args.skip_linears:
        result["linears"] = bench_linears(args.rows, GEMV_CONFIGS)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
