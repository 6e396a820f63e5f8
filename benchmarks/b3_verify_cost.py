"""B3 (GPU half): the cost of a speculative verify step with k drafts over a plain decode step.

Qwen3-8B shape, random bf16 weights (as B1), each request at a 512-token context. A verify step
feeds the last known token plus k drafts per request and needs logits at every one of them; it
runs through the decode CUDA graphs, one row per token (``ModelRunner.forward``), while the
rows fit the largest graph bucket, and eagerly beyond. Timed: the runner's forward plus the
argmax and the copy of the tokens to the host (what a real step adds on top of scheduling), the
median of repeated calls. Reported per batch and k: ms per step and the ratio to k = 0, plus
k = 4 with graphs turned off (the eager verify path) for comparison.

    python benchmarks/b3_verify_cost.py [--batches 1 16] [--max-k 8] [--tokenizer-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch
from b1_decode import commit, model_dir  # benchmarks/ is the script's own directory

from engine.step_batch import StepBatch

CONTEXT = 512


def verify_batch(batch: int, k: int, page_size: int, pages_per_seq: int,
                 rng: random.Random, vocab: int) -> StepBatch:
    """``batch`` requests at ``CONTEXT`` tokens, each feeding 1 + k tokens, all sampled."""
    ids, positions, slots, page_table = [], [], [], []
    for i in range(batch):
        pages = list(range(1 + i * pages_per_seq, 1 + (i + 1) * pages_per_seq))
        page_table.append(pages)
        for pos in range(CONTEXT, CONTEXT + k + 1):
            ids.append(rng.randrange(vocab))
            positions.append(pos)
            slots.append(pages[pos // page_size] * page_size + pos % page_size)
    n = k + 1
    return StepBatch(ids, positions, slots, [n] * batch, [CONTEXT + n] * batch, page_table,
                     list(range(batch * n)))


def time_step(runner, batch: StepBatch, reps: int = 20) -> float:
    def step() -> None:
        runner.forward(batch).argmax(-1).tolist()

    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-k", type=int, default=8)
    parser.add_argument("--tokenizer-dir", default=os.path.expanduser(
        "~/.cache/agentspeed/models/SmolLM2-135M-Instruct"))
    args = parser.parse_args()
    from engine.llm import LLM

    device = torch.cuda.get_device_name()
    print(f"device: {device}  commit: {commit()}  torch {torch.__version__}", flush=True)
    page_size = 16
    pages_per_seq = -(-(CONTEXT + args.max_k + 1) // page_size)
    max_batch = max(args.batches)
    llm = LLM(model_dir(args.tokenizer_dir), dtype="bfloat16", load_format="dummy",
              num_pages=max_batch * pages_per_seq + 8, max_num_seqs=max(16, max_batch),
              max_model_len=2048, page_size=page_size, speculative_drafter="ngram",
              num_speculative_tokens=args.max_k)  # graphs for 16 x (1 + max_k) rows
    runner = llm.engine.runner
    largest_bucket = max(runner.graphs.buckets) if runner.graphs is not None else 0
    rng = random.Random(0)
    rows = []
    with torch.inference_mode():
        for b in args.batches:
            base = None
            for k in range(args.max_k + 1):
                step_batch = verify_batch(b, k, page_size, pages_per_seq, rng, runner.vocab_size)
                t = time_step(runner, step_batch)
                base = base or t
                rows.append(dict(batch=b, k=k, ms=t * 1e3, ratio=t / base,
                                 graph=b * (k + 1) <= largest_bucket))
                print(f"batch {b} k {k}: {t * 1e3:.2f} ms, {t / base:.3f}x "
                      f"({'graph' if rows[-1]['graph'] else 'eager'})", flush=True)
        graphs, runner.graphs = runner.graphs, None
        eager = {}
        for b in args.batches:
            eager[b] = dict(k0=time_step(runner, verify_batch(b, 0, page_size, pages_per_seq,
                                                              rng, runner.vocab_size)) * 1e3,
                            k4=time_step(runner, verify_batch(b, 4, page_size, pages_per_seq,
                                                              rng, runner.vocab_size)) * 1e3)
        runner.graphs = graphs
    print()
    print(f"B3 verify cost, Qwen3-8B shape, random bf16, context {CONTEXT}; {device}")
    print(f"{'batch':>5} " + " ".join(f"{'k=' + str(k):>7}" for k in range(args.max_k + 1)))
    for b in args.batches:
        ratios = [r for r in rows if r["batch"] == b]
        print(f"{b:>5} " + " ".join(f"{r['ratio']:>6.3f}{'' if r['graph'] else '*'}"
                                    for r in ratios))
    print("(* eager: more rows than the largest graph bucket)")
    for b, e in eager.items():
        print(f"eager path, batch {b}: k=0 {e['k0']:.2f} ms, k=4 {e['k4']:.2f} ms")
    print(json.dumps(dict(benchmark="b3_verify_cost", device=device, commit=commit(),
                          context=CONTEXT, rows=rows, eager=eager)))


if __name__ == "__main__":
    main()
