"""B3: speculative decoding on agent-like transcripts, default model on CPU.

Each transcript in ``benchmarks/data`` (a file edited after a tool returned it, echoed JSON, a
directory listing) is generated greedily without speculation and with each drafter, in the same
run and engine. Reported per drafter: mean tokens per verify step (accepted drafts + bonus),
tokens per decode step, decode speedup over no speculation (decode rate = (N - 1) / (time to N
tokens - time to the first), so prefill is excluded), and host µs per drafter call. Outputs must
be token-identical. Median of repeats; the last line is JSON. ``self`` drafts with the target's
first ``--self-layers`` layers (default half); on CPU each of its drafts costs most of a target
forward, so it shows the draft-model interface's overhead, not a speedup.

    python benchmarks/b3_spec_decode.py [--max-tokens 96] [--repeats 3] [--k 4] [--self-layers 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from engine.default_model import default_model_path
from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.spec import DraftContext, SpecDecoder

DATA = Path(__file__).resolve().parent / "data"
DRAFTERS = ("none", "ngram", "suffix", "self")


def run_once(llm: LLM, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], float, int]:
    """Greedy stream; returns (tokens, decode seconds after the first token, decode steps)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    first, steps, tokens = None, 0, []
    for out in llm.stream(prompt_ids, params):
        if first is None:
            first = time.perf_counter()
        else:
            steps += 1
        tokens = out.token_ids
    return tokens, time.perf_counter() - first, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--self-layers", type=int, default=0,
                        help="layers the self drafter runs (0: half the model's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    llm = LLM(default_model_path(), dtype="float32", device="cpu", enable_prefix_caching=False,
              num_pages=1024, speculative_drafter="suffix", num_speculative_tokens=args.k)
    transcripts = []
    for path in sorted(DATA.glob("*.json")):
        spec = json.loads(path.read_text())
        transcripts.append((spec["name"], llm.apply_chat_template(spec["messages"])))
    run_once(llm, transcripts[0][1], 4)  # warm-up
    context = DraftContext(llm.engine.runner.model, args.self_layers)

    results: dict[str, dict[str, dict]] = {}
    for name, prompt_ids in transcripts:
        reference = None
        for drafter in DRAFTERS:
            times, steps_per_run, stats = [], 0, None
            for _ in range(args.repeats):
                llm.engine.spec = (None if drafter == "none"
                                   else SpecDecoder(drafter, args.k, context))
                tokens, seconds, steps = run_once(llm, prompt_ids, args.max_tokens)
                reference = reference if reference is not None else tokens
                assert tokens == reference, f"{name}/{drafter}: output differs from no speculation"
                times.append(seconds)
                steps_per_run = steps
                stats = llm.engine.spec.stats if llm.engine.spec else None
            n = len(reference)
            results.setdefault(name, {})[drafter] = {
                "tokens": n,
                "decode_tok_s": (n - 1) / statistics.median(times),
                "tokens_per_step": (n - 1) / max(steps_per_run, 1),
                "accepted_len": stats.mean_accepted_len if stats else 1.0,
                "acceptance": stats.acceptance_rate if stats else 0.0,
                "draft_us": 1e6 * stats.propose_time_s / max(stats.num_proposals, 1)
                if stats else 0.0,
            }
    llm.engine.spec = None

    print(f"device: CPU {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    self_layers = args.self_layers or llm.engine.runner.model.num_layers // 2
    print(f"commit: {commit}; model: SmolLM2-135M-Instruct fp32; greedy, max {args.max_tokens} "
          f"tokens, k={args.k}; self drafter: {self_layers} layers; median of {args.repeats}")
    header = (f"{'transcript':<11}{'drafter':<8}{'tokens':>7}{'tok/s':>8}{'speedup':>9}"
              f"{'tok/step':>9}{'acc.len':>8}{'acc.rate':>9}{'draft µs':>10}")
    print(header)
    summary = {}
    for name, per in results.items():
        base = per["none"]["decode_tok_s"]
        for drafter, r in per.items():
            r["speedup"] = r["decode_tok_s"] / base
            print(f"{name:<11}{drafter:<8}{r['tokens']:>7}{r['decode_tok_s']:>8.1f}"
                  f"{r['speedup']:>9.2f}{r['tokens_per_step']:>9.2f}{r['accepted_len']:>8.2f}"
                  f"{r['acceptance']:>9.2f}{r['draft_us']:>10.1f}")
    for drafter in DRAFTERS[1:]:
        summary[drafter] = {
            "speedup_geomean": round(statistics.geometric_mean(
                [per[drafter]["speedup"] for per in results.values()]), 3),
            "accepted_len_mean": round(statistics.mean(
                [per[drafter]["accepted_len"] for per in results.values()]), 3),
            "draft_us_mean": round(statistics.mean(
                [per[drafter]["draft_us"] for per in results.values()]), 1),
        }
    print(json.dumps({"bench": "B3", "commit": commit, "threads": torch.get_num_threads(),
                      "k": args.k, "max_tokens": args.max_tokens, "repeats": args.repeats,
                      "self_layers": self_layers,
                      "drafters": summary,
                      "per_transcript": {n: {d: {k: round(v, 3) for k, v in r.items()}
                                             for d, r in per.items()}
                                         for n, per in results.items()}}))


if __name__ == "__main__":
    main()
