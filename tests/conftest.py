"""Shared fixtures: the converted default model, tiny random-weight HF models, GPU skipping."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from engine.default_model import default_model_path as convert

    return convert()


def _tiny_model(tmp_path_factory, default_model_path: str, model_type: str, **extra) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.tokenizer import load_tokenizer

    config = AutoConfig.for_model(
        model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=49152,
        max_position_embeddings=512, eos_token_id=2, bos_token_id=1, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger than the default init so layers change the logits visibly
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.08)
    path = str(tmp_path_factory.mktemp(f"tiny-{model_type}"))
    model.save_pretrained(path)
    load_tokenizer(default_model_path).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory, default_model_path) -> str:
    return _tiny_model(tmp_path_factory, default_model_path, "qwen3", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory, default_model_path) -> str:
    return _tiny_model(tmp_path_factory, default_model_path, "qwen2", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory, default_model_path) -> str:
    rope = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return _tiny_model(tmp_path_factory, default_model_path, "llama", rope_parameters=rope,
                       tie_word_embeddings=False)
