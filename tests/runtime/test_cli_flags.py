"""Flags of ``agentspeed serve``/``chat``: parsing into ``EngineConfig`` / ``ServerConfig``,
validation, and what the session flags drive."""

from __future__ import annotations

import argparse

import pytest

from engine.config import EngineConfig
from runtime.cli import (
    add_engine_args,
    build_parser,
    engine_config_from_args,
    server_config_from_args,
)
from runtime.state import ServerConfig
from sessions.manager import STORE_TTL_LEASES, SessionManager
from sessions.stores.memory import MemoryStore


def _config(*argv: str) -> EngineConfig:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return engine_config_from_args(parser.parse_args(list(argv)))


def test_fast_path_flags_default_on() -> None:
    config = _config()
    assert (config.graph_attention, config.gemv, config.pdl, config.tp_one_shot_all_reduce) == (
        "auto", True, True, True)


def test_fast_path_flags_parse() -> None:
    config = _config("--graph-attention", "flashinfer", "--no-gemv", "--no-pdl",
                     "--no-tp-one-shot-all-reduce", "--tp", "2")
    assert config.graph_attention == "flashinfer"
    assert config.gemv is False and config.pdl is False
    assert config.tp_one_shot_all_reduce is False
    assert config.tensor_parallel_size == 2
    assert _config("--gemv").gemv is True
    assert _config().ahead_pacing is True and _config("--no-ahead-pacing").ahead_pacing is False
    assert _config().prefill_first_tokens == 2048
    assert _config("--prefill-first-tokens", "0").prefill_first_tokens == 0
    assert _config().prefill_first_max_share == 0.125
    assert _config("--prefill-first-max-share", "1").prefill_first_max_share == 1.0


def test_bad_graph_attention_is_refused() -> None:
    with pytest.raises(SystemExit):
        _config("--graph-attention", "cutlass")
    with pytest.raises(ValueError, match="graph_attention"):
        EngineConfig(graph_attention="cutlass")


def _serve(*argv: str) -> tuple[ServerConfig, EngineConfig]:
    args = build_parser().parse_args(["serve", *argv])
    return server_config_from_args(args), engine_config_from_args(args)


def test_session_flags_parse_and_take_effect() -> None:
    server, engine = _serve()
    assert (server.lease_s, engine.pin_budget_fraction, engine.host_tier_gb) == (
        ServerConfig.lease_s, EngineConfig.pin_budget_fraction, EngineConfig.host_tier_gb)
    server, engine = _serve("--session-lease-s", "30", "--pin-budget-fraction", "0.25",
                            "--host-tier-gb", "0.5")
    assert server.lease_s == 30.0
    assert engine.pin_budget_fraction == 0.25 and engine.host_tier_gb == 0.5
    # What each one drives: the pin budget in pages, and the store TTL of the retention rule.
    assert engine.scheduler_config(num_pages=1000, max_model_len=4096).pin_budget_pages == 250
    assert SessionManager(MemoryStore(), lease_s=server.lease_s).ttl_s == STORE_TTL_LEASES * 30
    # The host tier in pages is the model runner's: (host_tier_gb GiB) // KV bytes per page;
    # tests/sessions/test_session_metrics.py checks it on a server.


@pytest.mark.parametrize("flag, value, field", [
    ("--pin-budget-fraction", "1.5", "pin_budget_fraction"),
    ("--pin-budget-fraction", "-0.1", "pin_budget_fraction"),
    ("--host-tier-gb", "-1", "host_tier_gb"),
    ("--session-lease-s", "0", "lease_s")])
def test_bad_session_flags_are_refused(flag, value, field) -> None:
    with pytest.raises(ValueError, match=field):
        _serve(flag, value)


def test_serve_lifts_the_open_file_limit_for_its_connections() -> None:
    """In a child process started at a soft limit of 256 (below what 1000 WebSockets need):
    the soft limit rises to 1000 + headroom, or to the hard limit when that is lower."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "from runtime.cli import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = raise_open_file_limit(1000)\n"
        "want = 2024 if hard == resource.RLIM_INFINITY else min(2024, hard)\n"
        "assert got == want == resource.getrlimit(resource.RLIMIT_NOFILE)[0], (got, want)\n"
        "assert raise_open_file_limit(10) == want  # never lowered\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
