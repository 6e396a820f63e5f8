"""B1: decode speed of a Qwen3-8B-shaped model against the memory roofline (GPU).

Random bf16 weights (``load_format="dummy"``), 512-token prompts, 256 new tokens, greedy,
ignore_eos, at batch 1, 8, 32, 64. Decode tok/s is the median over full-batch decode steps
(every request decoding); roofline tok/s = batch x measured copy bandwidth (read + write of a
large device-to-device copy, same run) / bytes read per step (every weight but the embedding
table, plus the KV of the mean decode context). Baselines in the same run on the same
weights: HF transformers ``generate`` (eager) and our engine with ``enforce_eager=True``, batch 1.
The GPU idle gap per step is the step's wall time minus its GPU time, the latter measured by
CUDA events around back-to-back replays of the same step (graph + LM head + argmax).

    python benchmarks/b1_decode.py [--batches 1 8 32 64] [--tokenizer-dir DIR] [--no-hf]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

import torch

QWEN3_8B = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=4096,
    intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
    rope_theta=1000000.0, max_position_embeddings=40960, rms_norm_eps=1e-6,
    hidden_act="silu", attention_bias=False, bos_token_id=151643, eos_token_id=151645,
    torch_dtype="bfloat16",
)
PROMPT_LEN, NEW_TOKENS = 512, 256


def add_fast_path_args(parser: argparse.ArgumentParser) -> None:
    """The engine's decode fast-path switches (EngineConfig fields of the same names)."""
    parser.add_argument("--graph-attention", default="auto",
                        choices=["auto", "flashinfer", "triton"])
    parser.add_argument("--gemv", action=argparse.BooleanOptionalAction, default=True,
                        help="few-row linears through the Triton GEMV (kernels.ops.gemv)")
    parser.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=True,
                        help="programmatic dependent launch for the Triton kernels")


def fast_path(args: argparse.Namespace) -> dict:
    """``add_fast_path_args``' values as EngineConfig keywords."""
    return dict(graph_attention=args.graph_attention, gemv=args.gemv, pdl=args.pdl)


def fast_path_argv(args: argparse.Namespace) -> list[str]:
    """``add_fast_path_args``' values as command-line flags (for a child process)."""
    return ["--graph-attention", args.graph_attention, "--gemv" if args.gemv else "--no-gemv",
            "--pdl" if args.pdl else "--no-pdl"]


def copy_bandwidth(num_bytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy, counting read + write; median of 20."""
    x = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    times = []
    for i in range(25):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        if i >= 5:
            times.append(a.elapsed_time(b) / 1e3)
    del x, y
    return 2 * num_bytes / statistics.median(times)


def model_dir(tokenizer_dir: str) -> str:
    path = tempfile.mkdtemp(prefix="qwen3-8b-dummy-")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(QWEN3_8B, f)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), path)
    return path


def run_batch(llm, batch: int, rng: random.Random) -> dict:
    """Generate for ``batch`` random prompts; per-step wall times of full-batch decode steps."""
    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    engine = llm.engine
    ids = [f"b{batch}-{i}-{rng.random()}" for i in range(batch)]
    vocab = engine.vocab_size
    for rid in ids:
        engine.add_request(rid, [rng.randrange(vocab) for _ in range(PROMPT_LEN)], params)
    decode_times, tokens = [], {rid: [] for rid in ids}
    start = time.perf_counter()
    while engine.has_unfinished():
        t0 = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t0
        started = all(tokens[rid] for rid in ids)  # every request was decoding before the step
        for o in outs:
            tokens[o.request_id].extend(o.new_token_ids)
        if started and len(outs) == batch:
            decode_times.append(dt)
    total = time.perf_counter() - start
    assert all(len(t) == NEW_TOKENS for t in tokens.values()), "a request stopped early"
    return dict(decode_times=decode_times, total_s=total, first_tokens=tokens[ids[0]][:16])


@torch.inference_mode()
def gpu_step_time(llm, batch: int, reps: int = 30) -> float | None:
    """GPU seconds of one decode step (graph replay + LM head + argmax), replayed back to back."""
    graphs = llm.engine.runner.graphs
    if graphs is None or batch not in graphs._buckets:
        return None
    bucket = graphs._buckets[batch]

    def step() -> None:
        bucket.graph.replay()  # the LM head is inside the graph
        bucket.logits.argmax(-1)

    for _ in range(3):
        step()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        step()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / reps


def step_bytes(model, batch: int, kv_bytes_per_token: int) -> int:
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                  if "embed_tokens" not in n)
    mean_context = PROMPT_LEN + NEW_TOKENS // 2
    return weights + batch * mean_context * kv_bytes_per_token


def hf_baseline(llm, rng: random.Random) -> dict:
    """HF ``generate`` (eager) at batch 1 on the engine's own weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ours = llm.engine.runner.model
    config = AutoConfig.from_pretrained(llm.engine.runner.model_path)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    q, kv, inter = ours.num_heads * ours.head_dim, ours.num_kv_heads * ours.head_dim, \
        ours.intermediate_size
    state = {}
    for name, p in ours.named_parameters():
        if ".qkv_proj." in name:
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), p.split([q, kv, kv])):
                state["model." + name.replace("qkv_proj", part)] = rows
        elif ".gate_up_proj." in name:
            for part, rows in zip(("gate_proj", "up_proj"), p.split([inter, inter])):
                state["model." + name.replace("gate_up_proj", part)] = rows
        elif name.startswith("lm_head"):
            state[name] = p
        else:
            state["model." + name] = p
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    prompt = torch.tensor([[rng.randrange(config.vocab_size) for _ in range(PROMPT_LEN)]],
                          device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0)  # min_new_tokens keeps EOS out
    with torch.inference_mode():
        hf.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kwargs)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        hf(prompt)  # the prefill alone, to take out of the decode rate
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
    assert out.shape[1] == PROMPT_LEN + NEW_TOKENS
    # Same prompt through our engine: how many greedy tokens agree (bf16: may drift late).
    from engine.sampling_params import SamplingParams

    ours_ids = llm.generate(prompt[0].tolist(), SamplingParams(
        temperature=0.0, max_tokens=32, ignore_eos=True))[0].token_ids
    theirs = out[0, PROMPT_LEN:PROMPT_LEN + 32].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(ours_ids, theirs)) if a != b), 32)
    del hf, state
    torch.cuda.empty_cache()
    return dict(tok_s=(NEW_TOKENS - 1) / (total - prefill), total_s=total,
                greedy_prefix_agree=agree)


def commit() -> str:
    if os.environ.get("AGENTSPEED_COMMIT"):
        return os.environ["AGENTSPEED_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--tokenizer-dir", default=os.path.expanduser(
        "~/.cache/agentspeed/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--no-eager", action="store_true")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler pass")
    add_fast_path_args(parser)
    parser.add_argument("--gemv-one-row-max", type=int, default=None,
                        help="one-row GEMV up to this many outputs on any device (A/B of the rule)")
    parser.add_argument("--gemv-wide-config", default=None, metavar="BLOCK_N,BLOCK_K,WARPS",
                        help="override kernels.ops.gemv.WIDE_CONFIG (A/B of the tile)")
    args = parser.parse_args()
    from engine.llm import LLM
    from kernels.ops import gemv as gemv_ops

    torch.manual_seed(0)
    rng = random.Random(0)
    device = torch.cuda.get_device_name()
    print(f"device: {device}  commit: {commit()}  torch {torch.__version__}", flush=True)
    bw = copy_bandwidth()
    print(f"copy bandwidth (read+write): {bw / 1e12:.2f} TB/s", flush=True)
    path = model_dir(args.tokenizer_dir)
    max_batch = max(args.batches)
    pages = max_batch * -(-(PROMPT_LEN + NEW_TOKENS) // 16) + 64
    engine_args = dict(dtype="bfloat16", load_format="dummy", num_pages=pages,
                       max_num_seqs=max_batch, max_model_len=1024, **fast_path(args))
    if args.gemv_one_row_max is not None:
        gemv_ops.ONE_ROW_MAX_OUT = args.gemv_one_row_max
    if args.gemv_wide_config:
        gemv_ops.WIDE_CONFIG = tuple(int(v) for v in args.gemv_wide_config.split(","))
    one_row_max = gemv_ops.one_row_max_out(torch.device("cuda", torch.cuda.current_device()))
    knobs = {k: v for k, v in os.environ.items() if k.startswith(("AGENTSPEED_DECODE_",
                                                                  "AGENTSPEED_PREFETCH_"))}
    print(f"variant: graph_attention={args.graph_attention} gemv={args.gemv} pdl={args.pdl} "
          f"gemv_one_row_max={one_row_max} wide={gemv_ops.WIDE_CONFIG} env={knobs}",
          flush=True)
    t0 = time.perf_counter()
    try:
        llm = LLM(path, **engine_args)
    except Exception:  # report the eager engine rather than nothing; the log has the cause
        import traceback

        traceback.print_exc()
        print("GRAPH CAPTURE FAILED: falling back to enforce_eager=True", flush=True)
        torch.cuda.empty_cache()
        llm = LLM(path, **engine_args, enforce_eager=True)
    print(f"engine start (dummy weights + graph capture): {time.perf_counter() - t0:.1f} s",
          flush=True)
    runner = llm.engine.runner
    graphs = runner.graphs is not None
    kv_per_token = runner._kv_bytes_per_token()
    run_batch(llm, 1, rng)  # warm-up: prefill JIT paths, allocator
    rows = []
    for batch in args.batches:
        r = run_batch(llm, batch, rng)
        step_s = statistics.median(r["decode_times"])
        gpu_s = gpu_step_time(llm, batch)
        nbytes = step_bytes(runner.model, batch, kv_per_token)
        roof = batch * bw / nbytes
        row = dict(batch=batch, tok_s=batch / step_s, step_ms=step_s * 1e3,
                   gpu_step_ms=gpu_s * 1e3 if gpu_s else None,
                   idle_gap_ms=(step_s - gpu_s) * 1e3 if gpu_s else None,
                   roofline_tok_s=roof, pct_roofline=100 * batch / step_s / roof,
                   decode_steps=len(r["decode_times"]), total_s=r["total_s"])
        rows.append(row)
        print(f"batch {batch}: {row['tok_s']:.1f} tok/s ({row['pct_roofline']:.0f}% of "
              f"{roof:.0f}), step {row['step_ms']:.2f} ms, gpu {row['gpu_step_ms']} ms",
              flush=True)
    baselines, profiles = {}, []
    if llm.engine.overlap:  # the same engine and graphs without overlap scheduling
        llm.engine.overlap = False
        for batch in (min(args.batches), max(args.batches)):
            r = run_batch(llm, batch, rng)
            step_s = statistics.median(r["decode_times"])
            baselines[f"no_overlap_b{batch}"] = dict(tok_s=batch / step_s, step_ms=step_s * 1e3)
            print(f"no overlap, batch {batch}: {batch / step_s:.1f} tok/s", flush=True)
        llm.engine.overlap = True
    if not args.no_profile:
        from decode_profile import profile_decode  # benchmarks/ is the script's own dir

        for batch in (min(args.batches), max(args.batches)):
            try:
                profiles.append(profile_decode(llm, batch))
            except Exception as exc:  # the numbers above stand without it
                print(f"profile batch {batch} failed: {exc!r}", flush=True)
    if not args.no_hf:
        baselines["hf_generate_b1"] = hf_baseline(llm, rng)
        print(f"HF generate b1: {baselines['hf_generate_b1']}", flush=True)
    del llm, runner
    torch.cuda.empty_cache()
    if not args.no_eager:
        llm = LLM(path, **{**engine_args, "enforce_eager": True, "max_num_seqs": 1})
        r = run_batch(llm, 1, rng)
        r = run_batch(llm, 1, rng)
        baselines["ours_eager_b1"] = dict(tok_s=1 / statistics.median(r["decode_times"]))
        del llm
    print()
    print(f"B1 decode, Qwen3-8B shape, random bf16, prompt {PROMPT_LEN}, {NEW_TOKENS} new, "
          f"greedy; {device}; copy bw {bw / 1e12:.2f} TB/s")
    print(f"{'batch':>5} {'tok/s':>9} {'roofline':>9} {'% roof':>7} {'step ms':>8} "
          f"{'gpu ms':>7} {'gap ms':>7}")
    for row in rows:
        gpu = f"{row['gpu_step_ms']:.2f}" if row["gpu_step_ms"] else "-"
        gap = f"{row['idle_gap_ms']:.2f}" if row["idle_gap_ms"] is not None else "-"
        print(f"{row['batch']:>5} {row['tok_s']:>9.1f} {row['roofline_tok_s']:>9.1f} "
              f"{row['pct_roofline']:>6.1f}% {row['step_ms']:>8.2f} {gpu:>7} {gap:>7}")
    for name, b in baselines.items():
        print(f"baseline {name}: {b['tok_s']:.1f} tok/s")
    print(json.dumps(dict(benchmark="b1_decode", device=device, commit=commit(), graphs=graphs,
                          **fast_path(args), copy_bw_tbs=bw / 1e12, rows=rows, baselines=baselines,
                          overlap=True, profiles=profiles)))


if __name__ == "__main__":
    main()
