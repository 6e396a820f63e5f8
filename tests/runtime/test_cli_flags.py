"""Engine flags of ``agentspeed serve``/``chat``: parsing into ``EngineConfig`` and validation."""

from __future__ import annotations

import argparse

import pytest

from engine.config import EngineConfig
from runtime.cli import add_engine_args, engine_config_from_args


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


def test_bad_graph_attention_is_refused() -> None:
    with pytest.raises(SystemExit):
        _config("--graph-attention", "cutlass")
    with pytest.raises(ValueError, match="graph_attention"):
        EngineConfig(graph_attention="cutlass")
