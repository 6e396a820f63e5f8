"""Model definitions built from HF configs (our own modules, HF parameter names)."""
