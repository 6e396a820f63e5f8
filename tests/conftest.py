"""Shared fixtures: the converted default model, tiny random-weight HF models, GPU skipping.

The default model is converted once into ``$AGENTSPEED_CACHE`` (the user cache unless set) and
reused across runs; the tiny models are rebuilt per session in a temp dir (they take < 1 s).
"""

from __future__ import annotations

import os

import pytest
import torch

from engine.default_model import cache_dir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Pin the cache for this session so subprocesses (servers under test) find the same conversion.
os.environ.setdefault("AGENTSPEED_CACHE", cache_dir())

TINY_VOCAB = 49152  # the SmolLM2 tokenizer's, so its tokenizer can be saved alongside


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """SmolLM2-135M-Instruct as an HF-format fp32 directory (converted on first use)."""
    from engine.default_model import default_model_path as convert

    return convert()


def _tiny_model(tmp_path_factory, default_model_path: str, model_type: str, **extra) -> str:
    """A 2-layer random-weight HF checkpoint of ``model_type`` plus the SmolLM2 tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.for_model(
        model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=TINY_VOCAB,
        max_position_embeddings=512, rms_norm_eps=1e-6, eos_token_id=2, bos_token_id=1,
        **extra,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                # Not all ones: a norm weight loaded into the wrong slot must change the logits.
                param.uniform_(0.5, 1.5)
            else:
                # Larger than the default init (and biases non-zero) so every layer matters.
                param.normal_(0.0, 0.08)
    path = str(tmp_path_factory.mktemp(f"tiny-{model_type}"))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(default_model_path).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory, default_model_path) -> str:
    """Qwen3: per-head q/k RMSNorm, separate LM head."""
    return _tiny_model(tmp_path_factory, default_model_path, "qwen3", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory, default_model_path) -> str:
    """Qwen2: q/k/v bias, tied embeddings."""
    return _tiny_model(tmp_path_factory, default_model_path, "qwen2", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory, default_model_path) -> str:
    """Llama with llama3 RoPE scaling; with head_dim 16 and an original context of 64 its
    frequencies fall in all three bands (kept, blended, slowed)."""
    rope = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return _tiny_model(tmp_path_factory, default_model_path, "llama", rope_parameters=rope,
                       tie_word_embeddings=False)
