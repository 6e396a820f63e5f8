"""B2: agentic multi-turn sessions through the server's Responses WebSocket mode.

C concurrent sessions (one WebSocket each) against one ``agentspeed serve`` subprocess that this
script starts on a random-weight model (``--load-format dummy``, ``dummy_model.py``). Turn 1: a
shared system prompt (``--system-tokens``) + a unique context (``--context-tokens``); turns
2..``--turns``: one tool output (``function_call_output``, ``--turn-tokens``) sent with
``previous_response_id``. Every turn generates ``--gen-tokens`` (greedy, ignore_eos). Text
lengths are exact in tokens (``agentic_prompts.py``); the chat template adds a few per turn, so
prompt, cached and new counts are the server's own ``usage``.

Per turn (medians over sessions): TTFT, TPOT = (last - first text delta) / (output tokens - 1),
per-user tok/s = 1000 / TPOT ms, prompt / cached / new tokens. Against the B2 targets:
- cache hit / ideal >= 0.99, where hit = cached / prompt and ideal = 1 - new / prompt, new =
  prompt - (previous prompt + previous output) (turns 2+);
- TTFT <= 1.2 x ref, ref = the time to prefill one tool output on that context: in the C=1
  level, right after each turn, a *probe* branches off the same previous response with a
  different tool output of the same length and 1 output token; on the otherwise idle server its
  TTFT is that prefill as served (same client, socket and server path; its cached and computed
  tokens are reported). Run C=1 first: later levels compare against its probes;
- per-user decode >= 85% of roofline = copy bandwidth (read + write, measured here) /
  (weights without the embedding + C x KV bytes of the mean decode context), i.e. every session
  of the level decoding in one batch.
Before the levels a short warm-up (as many sessions as the largest level, 2 short turns; it also
caches the shared system prompt, as a server that has seen other sessions would); after each
level its sessions are deleted (unpinned). Every level draws its own unique texts.

Unknown flags pass through to ``agentspeed serve`` (``--max-num-batched-tokens 8192``,
``--attention-backend ...``). ``--time-budget-s`` bounds the whole run: sessions start no turn
that would end past it, results so far are printed, the server is stopped; a level that fails
(an error, or a stream silent for ``--stall-timeout-s``) is reported and the next one runs (the
server is restarted if it died).

Defaults are the full B2 shape (Qwen3-8B, C = 1 4 16, 11 turns, 2048 + 30720 + 10 x 800
tokens, 300 generated a turn). On a GPU host, carry ``.gpu_assets`` (the Qwen tokenizer, made
by ``dummy_model.py --export-tokenizer .gpu_assets/qwen3_tokenizer``) and point
FLASHINFER_WORKSPACE_BASE at a restored JIT cache. Estimates assume ~12K tok/s prefill and
decode at B1's ~65% of roofline; server start ~30 s.

CPU smoke (~20 s):
    python benchmarks/b2_agentic.py --model-arch tiny --concurrency 1 2 --turns 3 \
        --context-tokens 300 --system-tokens 100 --turn-tokens 50 --gen-tokens 8
Full B2, one H200 (~300 s; C=16 needs ~700K KV tokens = 103 GB, which fits its pool):
    python benchmarks/b2_agentic.py --time-budget-s 560 --json-out $OUT/b2.json
One H100 holds ~340K KV tokens, so C=16 at 30K context cannot run (16 x 45K tokens = 106 GB).
Full shape at C=1, 4 (~170 s), then C=16 at a scale that fits, C=1 again for its reference
(16 x 17K tokens; ~110 s):
    python benchmarks/b2_agentic.py --concurrency 1 4 --time-budget-s 300 --json-out $OUT/b2.json
    python benchmarks/b2_agentic.py --concurrency 1 16 --context-tokens 8192 --turns 6 \
        --time-budget-s 270 --json-out $OUT/b2_c16.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from agentic_prompts import ExactTexts
from agentic_report import (
    fmt,
    kv_capacity_pages,
    model_bytes,
    print_level,
    probe_summary,
    server_deltas,
    skip,
    summarize,
)
from agentic_session import SessionPlan, SessionResult, run_session
from bench_server import BenchServer
from dummy_model import ARCHS, make_model_dir

_RESERVE_S = 25.0  # kept at the end of the budget: stop the server, print, write JSON


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    # No abbreviations: unknown flags go to the server (--model must not mean --model-arch).
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model-arch", default="qwen3-8b", choices=sorted(ARCHS))
    parser.add_argument("--tokenizer-dir", default=None, help="Qwen tokenizer files")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--turns", type=int, default=11)
    parser.add_argument("--context-tokens", type=int, default=30720)
    parser.add_argument("--system-tokens", type=int, default=2048)
    parser.add_argument("--turn-tokens", type=int, default=800)
    parser.add_argument("--gen-tokens", type=int, default=300)
    parser.add_argument("--time-budget-s", type=float, default=540.0,
                        help="wall-clock limit of the whole run, server start included")
    parser.add_argument("--stall-timeout-s", type=float, default=180.0,
                        help="a turn whose stream is silent this long fails its session")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--no-reference", action="store_true", help="no probes at C=1")
    parser.add_argument("--json-out", default=None, help="also write the JSON here (per level)")
    args, server_args = parser.parse_known_args()
    if min(args.concurrency) < 1 or args.turns < 1 or min(
            args.context_tokens, args.system_tokens, args.turn_tokens, args.gen_tokens) < 1:
        parser.error("counts must be positive")
    return args, server_args


def has_flag(server_args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in server_args)


def flag_value(server_args: list[str], flag: str, default: str) -> str:
    for i, a in enumerate(server_args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(server_args):
            return server_args[i + 1]
    return default


def max_session_tokens(args: argparse.Namespace) -> int:
    """An upper bound on one session's final length (templates add < 32 tokens a turn)."""
    return (args.system_tokens + args.context_tokens
            + args.turns * (args.turn_tokens + args.gen_tokens + 32) + 64)


def device_info() -> tuple[str, float | None, int]:
    """(device name, copy bandwidth B/s or None on CPU, bytes per weight as served)."""
    if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
        # No NVIDIA driver: skip importing torch (~2 s of a CPU smoke run).
        return f"cpu ({os.cpu_count()} cores)", None, 4
    import torch

    if not torch.cuda.is_available():
        return f"cpu ({os.cpu_count()} cores)", None, 4
    from b1_decode import copy_bandwidth

    name, bw = torch.cuda.get_device_name(), copy_bandwidth()
    torch.cuda.empty_cache()  # leave the memory to the server (this process keeps its context)
    return name, bw, 2


def commit() -> str:
    if os.environ.get("AGENTSPEED_COMMIT"):
        return os.environ["AGENTSPEED_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- running levels
def plans(texts: ExactTexts, system_text: str, args: argparse.Namespace, tag: str,
          concurrency: int, context_tokens: int, turns: int, gen_tokens: int,
          probes: bool) -> list[SessionPlan]:
    return [SessionPlan(
        index=i, system_text=system_text,
        context_text=texts.text(context_tokens, f"{tag}/{i}/context"),
        tool_texts=[texts.text(args.turn_tokens, f"{tag}/{i}/tool{t}")
                    for t in range(2, turns + 1)],
        probe_texts=[texts.text(args.turn_tokens, f"{tag}/{i}/probe{t}")
                     for t in range(2, turns + 1)] if probes else [],
        gen_tokens=gen_tokens) for i in range(concurrency)]


async def run_level(server: BenchServer, level_plans: list[SessionPlan], deadline: float,
                    stall_s: float) -> tuple[list[SessionResult], float, str | None]:
    """Run every session at once; (results, wall seconds, "timeout" if cut at the deadline)."""
    results = [SessionResult() for _ in level_plans]
    start = time.perf_counter()
    cut = None
    tasks = [run_session(server.ws_url, p, r, deadline, stall_s)
             for p, r in zip(level_plans, results)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(1.0, deadline - start))
    except TimeoutError:
        cut = "timeout"
    wall = time.perf_counter() - start
    for r in results:  # close the sessions: their pins must not crowd the next level
        if r.turns:
            await asyncio.to_thread(server.delete_response, r.turns[-1].response_id)
    return results, wall, cut


# ----------------------------------------------------------------------------------- main
def server_flags(args: argparse.Namespace, passed: list[str], model_dir: str,
                 workdir: str) -> list[str]:
    """Our flags for ``agentspeed serve``, unless passed through, then the passed ones."""
    flags = ["--model", model_dir, "--log-level", "WARNING"]
    if not has_flag(passed, "--load-format"):
        flags += ["--load-format", "dummy"]
    if not has_flag(passed, "--max-model-len"):
        flags += ["--max-model-len", str(-(-max_session_tokens(args) // 1024) * 1024)]
    if not has_flag(passed, "--session-store"):  # never the user's default store
        flags += ["--session-store", f"sqlite:///{workdir}/sessions.sqlite3"]
    return flags + passed


def main() -> int:
    t_start = time.perf_counter()
    args, passed = parse_args()
    end = t_start + args.time_budget_s - _RESERVE_S
    device, bw, dtype_bytes = device_info()
    sha = commit()
    workdir = tempfile.mkdtemp(prefix="b2-agentic-")  # server logs stay; the model goes
    model_dir = make_model_dir(args.model_arch, os.path.join(workdir, args.model_arch),
                               args.tokenizer_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        weight_bytes, kv_bytes = model_bytes(json.load(f), dtype_bytes)
    flags = server_flags(args, passed, model_dir, workdir)
    need = max_session_tokens(args)
    settings = dict(model_arch=args.model_arch, concurrency=args.concurrency, turns=args.turns,
                    system_tokens=args.system_tokens, context_tokens=args.context_tokens,
                    turn_tokens=args.turn_tokens, gen_tokens=args.gen_tokens,
                    server_flags=flags[2:], time_budget_s=args.time_budget_s)
    print(f"device: {device}  commit: {sha}  python {sys.version.split()[0]}", flush=True)
    print(f"copy bandwidth (read+write): {fmt(bw and bw / 1e12, '.2f', 0)} TB/s; weights "
          f"(no embedding) {weight_bytes / 1e9:.2f} GB, KV {kv_bytes / 1024:.0f} KiB/token",
          flush=True)
    print(f"settings: {json.dumps(settings)}", flush=True)
    report = dict(benchmark="b2_agentic", device=device, commit=sha, settings=settings,
                  copy_bw_tbs=None if bw is None else bw / 1e12, weight_bytes=weight_bytes,
                  kv_bytes_per_token=kv_bytes, levels=[], reference={})

    def write_json() -> None:
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(report, f, indent=1)

    def ready(server: BenchServer, t0: float) -> BenchServer:
        server.wait_ready(max(10.0, end - time.perf_counter()))
        report["server_start_s"] = time.perf_counter() - t0
        print(f"server ready in {report['server_start_s']:.1f} s (log {server.log_path})",
              flush=True)
        return server

    server = None
    try:
        t0 = time.perf_counter()
        server = BenchServer(flags, os.path.join(workdir, "server.log"))
        from transformers import AutoTokenizer  # while the server starts

        texts = ExactTexts(AutoTokenizer.from_pretrained(model_dir))
        system_text = texts.text(args.system_tokens, "system")
        ready(server, t0)
        page_size = int(flag_value(passed, "--page-size", "16"))
        if not args.no_warmup:  # compiles first-call paths; caches the shared system prompt
            t0 = time.perf_counter()
            # As many sessions as the largest level, so its batch shapes are not first seen there.
            warm = plans(texts, system_text, args, "warmup", max(args.concurrency),
                         min(args.context_tokens, 1024), 2, min(args.gen_tokens, 16), probes=True)
            # First calls may JIT-compile kernels for minutes: no stall limit here.
            results, _, _ = asyncio.run(run_level(server, warm, end, end - t0))
            report["warmup_s"] = time.perf_counter() - t0
            print(f"warm-up: {report['warmup_s']:.1f} s {results[0].error or ''}", flush=True)
        refs: dict[int, dict] = {}
        for index, c in enumerate(args.concurrency):
            if not server.alive:
                if end - time.perf_counter() < 2 * report["server_start_s"] + 30:
                    skip(report, c, "server died; no time to restart")
                    continue
                server.stop()
                t0 = time.perf_counter()
                server = ready(BenchServer(flags, os.path.join(workdir, f"server-c{c}.log")), t0)
            if end - time.perf_counter() < 5:
                skip(report, c, "time budget")
                continue
            before = server.metrics()  # engine gauges appear after the first request
            pages = kv_capacity_pages(before)
            capacity = None if pages is None else pages * page_size
            report["kv_capacity_tokens"] = capacity
            if capacity and c * need > capacity:
                print(f"! C={c} needs up to {c * need} KV tokens, the pool holds {capacity}: "
                      "expect preemption / recomputation", flush=True)
            probes = c == 1 and not args.no_reference
            level_plans = plans(texts, system_text, args, f"{index}/c{c}", c, args.context_tokens,
                                args.turns, args.gen_tokens, probes)
            results, wall, cut = asyncio.run(
                run_level(server, level_plans, end, args.stall_timeout_s))
            if probes:
                refs = probe_summary(results, args.turn_tokens + 32)
                report["reference"] = {str(k): v for k, v in refs.items()}
            level = summarize(c, results, wall, cut, args.gen_tokens, bw, weight_bytes,
                              kv_bytes, refs)
            level["server"] = server_deltas(before, server.metrics())
            if not server.alive:
                level["errors"].append(f"server died:\n{server.log_tail(1500)}")
                level["status"] = "failed"
            elif level["errors"]:  # the engine's traceback is in the server's log
                level["errors"].append(f"server log:\n{server.log_tail(3000)}")
            report["levels"].append(level)
            print_level(level)
            write_json()
    except Exception as exc:  # report what we have rather than nothing
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"ERROR: {report['error']}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(model_dir, ignore_errors=True)
    if report["reference"]:
        print("\nreference (C=1 probes: prefill of one tool output on the turn's context):")
        for turn, ref in report["reference"].items():
            print(f"  turn {turn}: {ref['ttft_ms']:.1f} ms for {ref['computed_tokens']} new "
                  f"tokens on {ref['cached_tokens']} cached"
                  + ("" if ref["valid"] else " (missed the cache: not used)"))
    report["wall_s"] = time.perf_counter() - t_start
    write_json()
    print(json.dumps(report))
    ok = "error" not in report and all(lv["status"] == "ok" for lv in report["levels"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
