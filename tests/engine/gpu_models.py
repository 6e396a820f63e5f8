"""Model configs shared by the GPU engine tests: random-weight Qwen3s built from a config."""

from __future__ import annotations

import os
import shutil

import pytest

CONFIGS = {
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024),
    "mid": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=8,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=32000),
}


def model_config(name: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "qwen3", max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1e6,
        tie_word_embeddings=False, eos_token_id=2, bos_token_id=1, **CONFIGS[name])


def tiny_model_dir(tmp_path) -> str:
    """The tiny config as a model directory (random weights come from ``load_format="dummy"``)
    with tokenizer files from ``AGENTSPEED_TOKENIZER_DIR`` (GPU hosts lack the default model)."""
    path = str(tmp_path / "tiny-qwen3")
    os.makedirs(path)
    model_config("tiny").save_pretrained(path)
    tok_dir = os.environ.get("AGENTSPEED_TOKENIZER_DIR", ".gpu_assets/smollm2_tokenizer")
    if not os.path.isdir(tok_dir):
        pytest.skip("no tokenizer files for the model dir")
    for f in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, f), path)
    return path
