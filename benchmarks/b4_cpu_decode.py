"""B4: decode tok/s of the embedded default model on CPU, agentspeed vs HF transformers.

Same prompt, same machine, same run. Decode rate = (N - 1) / (time to N tokens - time to 1 token),
so prefill is excluded for both. Median of repeats; the last line is JSON.

    python benchmarks/b4_cpu_decode.py [--new-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import torch

from engine.default_model import default_model_path
from engine.llm import LLM
from engine.sampling_params import SamplingParams

PROMPT = "Explain, step by step, how a hash map handles collisions, with a short example."


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_rate(run, new_tokens: int, repeats: int) -> float:
    run(1)  # warm-up
    rates = []
    for _ in range(repeats):
        t1 = timed(lambda: run(1))
        tn = timed(lambda: run(new_tokens))
        rates.append((new_tokens - 1) / (tn - t1))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = default_model_path()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"

    llm = LLM(path, dtype="float32", device="cpu")
    prompt_ids = llm.apply_chat_template([{"role": "user", "content": PROMPT}])

    def ours(n: int) -> None:
        out = llm.generate([prompt_ids], SamplingParams(temperature=0, max_tokens=n,
                                                         ignore_eos=True))[0]
        assert len(out.token_ids) == n

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    input_ids = torch.tensor([prompt_ids])

    def theirs(n: int) -> None:
        with torch.inference_mode():
            out = hf.generate(input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=2)
        assert out.shape[1] - input_ids.shape[1] == n

    # Same workload for both: greedy, N tokens, no EOS stop.
    ours_rate = decode_rate(ours, args.new_tokens, args.repeats)
    hf_rate = decode_rate(theirs, args.new_tokens, args.repeats)
    cpu = platform.processor() or platform.machine()
    print(f"device: CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"commit: {commit}; model: SmolLM2-135M-Instruct fp32; prompt {len(prompt_ids)} tokens;"
          f" {args.new_tokens} new tokens greedy; median of {args.repeats}")
    print(f"{'engine':<24}{'decode tok/s':>14}")
    print(f"{'agentspeed':<24}{ours_rate:>14.1f}")
    print(f"{'transformers generate':<24}{hf_rate:>14.1f}")
    print(f"ratio agentspeed / transformers: {ours_rate / hf_rate:.2f}")
    print(json.dumps({"bench": "B4", "commit": commit, "threads": torch.get_num_threads(),
                      "prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens,
                      "agentspeed_tok_s": round(ours_rate, 2),
                      "transformers_tok_s": round(hf_rate, 2),
                      "ratio": round(ours_rate / hf_rate, 3)}))


if __name__ == "__main__":
    main()
