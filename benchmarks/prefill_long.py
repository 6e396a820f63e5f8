"""Long-context prefill, per attention backend: B2's first turn in process (GPU).

Qwen3-8B shape, random bf16 weights, the whole GPU for the KV pool (as ``agentspeed serve``
sizes it). A 2048-token prefix is prefilled first (so it is cached, its last page partial), then
prompts of ``--contexts`` more tokens on top of it, chunked by ``--chunk`` tokens a step; each
reports its time to the first token (the prefill of its new tokens) and prefill tok/s. Each
backend runs in its own process, so a CUDA fault in one (B2 hit an illegal memory access in
FlashInfer's paged prefill, docs/benchmarks.md) is reported and the others still run;
``--launch-blocking`` makes the fault's traceback name the kernel. Last line: JSON.

    python benchmarks/prefill_long.py [--backends triton flashinfer] [--contexts 6000 30720]
    python benchmarks/prefill_long.py --arch tiny --backends torch --contexts 300   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX_TOKENS = 2048


def run_backend(args: argparse.Namespace) -> None:
    """In the child: one engine, the prefix, then each context; prints one RESULT line."""
    import torch

    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    from dummy_model import make_model_dir

    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    result: dict = {"backend": args.backend, "rows": []}
    t0 = time.perf_counter()
    llm = LLM(make_model_dir(args.arch), load_format="dummy", max_model_len=46080,
              attention_backend=args.backend, max_num_batched_tokens=args.chunk)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    result["engine_start_s"] = time.perf_counter() - t0
    rng = random.Random(0)
    prefix = [rng.randrange(1000, 100000) for _ in range(PREFIX_TOKENS + 5)]
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    try:
        llm.generate([prefix], one)
        for context in args.contexts:
            prompt = prefix + [rng.randrange(1000, 100000) for _ in range(context)]
            sync()
            start = time.perf_counter()
            out = llm.generate([prompt], one)[0]
            sync()
            seconds = time.perf_counter() - start
            new = len(prompt) - out.num_cached_tokens
            result["rows"].append(dict(context=len(prompt), cached=out.num_cached_tokens,
                                       new_tokens=new, ttft_s=seconds, tok_s=new / seconds))
            print(f"{args.backend}: {len(prompt)} tokens ({out.num_cached_tokens} cached) in "
                  f"{seconds:.2f} s, {new / seconds:.0f} tok/s", flush=True)
    except Exception as exc:  # the point of the run: report it, with where it happened
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["triton", "flashinfer"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[6000, 30720])
    parser.add_argument("--chunk", type=int, default=2048, help="max_num_batched_tokens")
    parser.add_argument("--arch", default="qwen3-8b", help="dummy_model.py architecture "
                        "(tiny: a CPU smoke run with --backends torch)")
    parser.add_argument("--launch-blocking", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per backend")
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        run_backend(args)
        return
    env = dict(os.environ, **({"CUDA_LAUNCH_BLOCKING": "1"} if args.launch_blocking else {}))
    results = []
    for backend in args.backends:
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--chunk",
               str(args.chunk), "--arch", args.arch, "--contexts", *map(str, args.contexts)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=args.timeout_s)
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:  # its captured output may come as bytes
            parts = [p.decode(errors="replace") if isinstance(p, bytes) else (p or "")
                     for p in (exc.stdout, exc.stderr)]
            output = "".join(parts) + f"\ntimed out after {args.timeout_s} s"
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        result = (json.loads(lines[-1][len("RESULT "):]) if lines
                  else {"backend": backend, "rows": [], "error": output[-2000:]})
        for row in result["rows"]:
            print(f"{backend}: {row['context']} tokens ({row['cached']} cached): prefill "
                  f"{row['ttft_s']:.2f} s, {row['tok_s']:.0f} tok/s", flush=True)
        if "error" in result:
            print(f"{backend}: FAILED\n{output[-3000:]}", flush=True)
        results.append(result)
    print(json.dumps({"benchmark": "prefill_long", "chunk": args.chunk, "results": results}))


if __name__ == "__main__":
    main()
