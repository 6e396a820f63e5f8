"""``agentspeed serve`` stops on SIGINT / SIGTERM within 30 s and leaves no process behind.

Each case starts its own server. Its process tree (the engine process and whatever else
``multiprocessing`` spawned) is read before the signal, from ``psutil`` when installed, else
``/proc``; a process counts as gone once it no longer exists, is a zombie, or its pid now
belongs to a younger process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import openai
import pytest

from tests.runtime.server import ServerProcess

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, float]:
    """Every process below ``pid``: pid -> start time (identifies it against pid reuse)."""
    if psutil is not None:
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            parents[int(name)] = stat[1]
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found and (stat := _stat(child)) is not None:
                found[child] = float(stat[2])
                frontier.append(child)
    return found


def running(pid: int, started: float) -> bool:
    if psutil is not None:
        try:
            p = psutil.Process(pid)
            return p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    stat = _stat(pid)
    return stat is not None and float(stat[2]) == started and stat[0] != "Z"


def engine_pids(tree: dict[int, float]) -> list[int]:
    def cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            return ""

    return [pid for pid in tree if "spawn_main" in cmdline(pid)]


def stream_until_cut(base_url: str, first_token: threading.Event, outcome: list) -> None:
    """A long streamed chat completion, read until the server ends it."""
    client = openai.OpenAI(api_key="sk-none", base_url=base_url + "/v1", max_retries=0,
                           timeout=60)
    try:
        stream = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Count up."}],
            max_tokens=900, temperature=0, stream=True, extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_token.set()
        outcome.append("ended")
    except Exception as exc:  # the connection may be cut instead of closed
        outcome.append(type(exc).__name__)
    finally:
        first_token.set()


@pytest.mark.parametrize("sig,busy", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["sigint-idle", "sigterm-streaming"])
def test_signal_stops_server_and_children(default_model_path, sig, busy):
    server = ServerProcess("--num-pages", "128", "--max-model-len", "1024")
    tree: dict[int, float] = {}
    try:
        server.wait_ready()
        tree = descendants(server.proc.pid)
        assert engine_pids(tree), f"no engine process under the server: {tree}"
        outcome: list = []
        if busy:  # a response in flight must not hold the shutdown past its grace period
            first_token = threading.Event()
            client_thread = threading.Thread(target=stream_until_cut, daemon=True,
                                             args=(server.base_url, first_token, outcome))
            client_thread.start()
            assert first_token.wait(120), "the stream never produced a token"
            assert not outcome, outcome
        start = time.monotonic()
        server.proc.send_signal(sig)
        try:
            code = server.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 30 s after {sig.name}:\n{server.read_log()}")
        took_s = time.monotonic() - start
        # Children end with their parent (at worst moments later, once their pipes close).
        deadline = time.monotonic() + 5
        while (left := [p for p, t in tree.items() if running(p, t)]) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.read_log()
        assert not left, f"left behind after {sig.name}: {left}\n{log}"
        # uvicorn re-raises the signal it caught once shut down: killed by it, or a clean 0.
        assert code in (0, -sig), f"exit code {code} after {sig.name} ({took_s:.1f} s):\n{log}"
        if busy:
            client_thread.join(30)
            assert outcome, "the in-flight stream never ended"
        else:
            assert "Traceback" not in log, log
    finally:  # a failed case leaks nothing into the next
        server.stop(signal.SIGKILL)
        for pid, started in tree.items():
            if running(pid, started):
                os.kill(pid, signal.SIGKILL)
