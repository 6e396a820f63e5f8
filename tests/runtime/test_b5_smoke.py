"""B5 (``benchmarks/b5_server_overhead.py``) at smoke scale on CPU: the in-process engine and a
real server subprocess decode the same prompt, and idle sessions stay open on real WebSockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "b5_server_overhead.py")
SESSIONS = 6


def test_b5_smoke_compares_the_same_prompt_and_counts_idle_sessions() -> None:
    cmd = [sys.executable, SCRIPT, "--new-tokens", "4", "--repeats", "1",
           "--sessions", str(SESSIONS), "--open-batch", "4",
           "--num-pages", "256", "--max-model-len", "1024"]  # engine flags: both engines
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["bench"] == "B5" and report["commit"]
    assert report["engine_flags"] == ["--num-pages", "256", "--max-model-len", "1024"]
    # The same prompt tokens both ways: the rendered instructions + input equal the template.
    assert report["server_prompt_tokens"] == report["prompt_tokens"] > 0
    assert report["in_process_tok_s"] > 0 and report["server_tok_s"] > 0
    assert report["ratio"] == round(report["server_tok_s"] / report["in_process_tok_s"], 4)
    sessions = report["sessions"]
    assert sessions["open_websockets"] == SESSIONS  # every socket open at the measurement
    roles = {p["name"] for p in sessions["processes"]}
    assert {"api", "engine"} <= roles, roles
    assert sessions["rss_mib_sessions"] > 0 and sessions["rss_mib_warm"] > 0
