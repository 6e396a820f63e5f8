"""Model definitions built from HF configs (our own modules, HF parameter names on load)."""

from engine.models.llama import LlamaForCausalLM
from engine.models.registry import model_class, supported_architectures

__all__ = ["LlamaForCausalLM", "model_class", "supported_architectures"]
