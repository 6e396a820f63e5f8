"""The embedded default model: conversion, EOS from the config, tokenizer, resolution."""

from __future__ import annotations

import os
import time

import pytest

from engine import default_model as dm
from engine.default_model import eos_token_ids, resolve_model
from engine.loader import load_config
from engine.tokenizer import load_tokenizer


def test_converted_directory_is_complete_and_cached(default_model_path):
    files = set(os.listdir(default_model_path))
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    start = time.perf_counter()
    assert dm.default_model_path() == default_model_path
    assert time.perf_counter() - start < 1.0


def test_eos_from_config_and_tokenizer_round_trip(default_model_path):
    config = load_config(default_model_path)
    assert eos_token_ids(config, default_model_path) == [2]
    assert config.num_attention_heads == 9 and config.num_key_value_heads == 3
    tok = load_tokenizer(default_model_path)
    assert tok.convert_ids_to_tokens(2) == "<|im_end|>"
    text = "Hello, agents! 🚀"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_resolve_model(default_model_path, tmp_path):
    for alias in (None, "default", "SmolLM2-135M-Instruct"):
        assert resolve_model(alias) == default_model_path
    assert resolve_model(default_model_path) == default_model_path
    with pytest.raises(ValueError, match="not a directory|neither"):
        resolve_model(str(tmp_path / "nope"))
