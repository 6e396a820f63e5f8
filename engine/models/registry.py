"""Model classes by HF architecture name, falling back to ``model_type``.

One table is the single place a new architecture is declared; everything else asks
``model_class(config)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from engine.models.llama import LlamaForCausalLM

# HF ``config.architectures[0]`` -> our class; the Llama module serves all three dense families.
_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}
# Used when a config names no (known) architecture, e.g. one built with ``AutoConfig.for_model``.
_MODEL_TYPES: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def model_class(config: Any) -> type[nn.Module]:
    """The class that implements ``config``; ``ValueError`` naming what is supported if none."""
    architectures = getattr(config, "architectures", None) or []
    for arch in architectures:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    model_type = getattr(config, "model_type", None)
    if not architectures and model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise ValueError(
        f"unsupported architecture {architectures} (model_type {model_type!r}); "
        f"supported: {supported_architectures()}"
    )
