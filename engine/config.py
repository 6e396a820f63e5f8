"""Frozen configuration of the engine (no torch here: the scheduler imports it).

``EngineConfig`` is what users set (the CLI reads its defaults from the fields); values that
depend on the model or the device (``max_model_len``, ``num_pages``) stay ``None`` until the
runner resolves them, and ``SchedulerConfig`` carries only resolved numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICES = ("auto", "cpu", "cuda")
_LOAD_FORMATS = ("auto", "dummy")
DRAFTERS = ("none", "suffix", "ngram", "self")  # engine.spec's registry, plus none


@dataclass(frozen=True)
class SchedulerConfig:
    num_pages: int  # KV pages, page 0 reserved as scratch
    page_size: int  # tokens per page
    max_model_len: int  # longest prompt + output of one request
    max_num_seqs: int = 64  # requests running at once
    max_num_batched_tokens: int = 2048  # tokens per step (the chunked-prefill budget)
    enable_prefix_caching: bool = True
    pin_budget_pages: int = 0  # pages session pins may hold; 0: none (every pin is demoted)
    host_tier_pages: int = 0  # pages the host-memory tier holds
    # A step admitting only whole prompts of at most this many new tokens together runs them
    # without the decode rows (one step, never two in a row); 0: always mixed.
    prefill_first_tokens: int = 0
    # Sit-outs per decode step the decode rows give up at most, in the long run (a bucket of a
    # few sit-outs, refilled by this much at each step the decode rows run); 1: no bound.
    prefill_first_max_share: float = 0.125

    def __post_init__(self) -> None:
        assert self.num_pages >= 2, f"num_pages must be >= 2, got {self.num_pages}"
        assert self.page_size >= 1, f"page_size must be >= 1, got {self.page_size}"
        assert self.max_model_len >= 2, f"max_model_len must be >= 2, got {self.max_model_len}"
        assert self.max_num_seqs >= 1, "max_num_seqs must be >= 1"
        assert self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1"
        assert self.prefill_first_tokens >= 0, "prefill_first_tokens must be >= 0"
        assert 0.0 < self.prefill_first_max_share <= 1.0, "prefill_first_max_share not in (0, 1]"


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # path of an HF-format directory; None: the embedded default
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda when available
    load_format: str = "auto"  # dummy: random weights from config.json alone
    page_size: int = 16
    num_pages: int | None = None  # None: from kv_cache_memory_gb (CPU) or free GPU memory
    kv_cache_memory_gb: float = 1.0  # CPU KV budget when num_pages is None
    gpu_memory_utilization: float = 0.85  # fraction of GPU memory for weights + KV
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    # Short whole prompts (a tool result) run without the decode rows for one step (never two
    # in a row) when they total at most this many new tokens; 0: always mixed (SchedulerConfig).
    # B2 at 4 sessions on an H100: new turns' TTFT 1.23x -> 1.075x a lone prefill, decode equal.
    prefill_first_tokens: int = 2048
    # ... and for at most this share of their steps over time: with short prompts arriving
    # at every other step (busy chat serving) they lose at most 1 step in 9, not 1 in 2.
    prefill_first_max_share: float = 0.125
    enable_prefix_caching: bool = True
    pin_budget_fraction: float = 0.5  # share of the KV pool that session pins may hold
    host_tier_gb: float = 2.0  # host memory for demoted session KV
    attention_backend: str = "auto"
    enforce_eager: bool = False  # True: no decode CUDA graphs (engine.cuda_graphs)
    # Attention inside the decode graphs (engine.graph_attention): flashinfer | triton; auto:
    # triton where Triton is installed (faster at every measured shape), else flashinfer.
    graph_attention: str = "auto"
    # One- and two-row linears through the Triton GEMV where it beats cuBLAS (kernels.ops.gemv).
    gemv: bool = True
    # Programmatic dependent launch for the Triton kernels that support it (SM90+ CUDA only):
    # each may start while the kernel before it finishes (kernels._triton.set_pdl).
    pdl: bool = True
    # Overlap scheduling (EngineCore): prepare step N+1 while N runs. None: on with CUDA.
    overlap_schedule: bool | None = None
    # Served engines (engine_process): queue the overlapped step only shortly before the running
    # one is expected to end, and not at all when a request arrives first (engine.ahead_pacer).
    # B2 at 4 sessions on an H100: new turns' TTFT 1.233x -> 1.202x a lone prefill, decode equal.
    ahead_pacing: bool = True
    seed: int = 0
    speculative_drafter: str = "none"  # none | suffix | ngram | self (engine.spec)
    num_speculative_tokens: int = 4  # most drafts verified per request per step
    speculative_draft_layers: int = 0  # self drafter: target layers it runs; 0: half of them
    # Ranks (one process and device each) one model is sharded over (engine.parallel).
    tensor_parallel_size: int = 1
    # Decode-sized all-reduces through symmetric memory's one-shot kernel (else NCCL).
    tp_one_shot_all_reduce: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {_DEVICES}, got {self.device!r}")
        if self.load_format not in _LOAD_FORMATS:
            raise ValueError(
                f"load_format must be one of {_LOAD_FORMATS}, got {self.load_format!r}")
        for name in ("page_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.prefill_first_tokens < 0:
            raise ValueError(f"prefill_first_tokens must be >= 0, got {self.prefill_first_tokens}")
        if not 0.0 < self.prefill_first_max_share <= 1.0:
            raise ValueError("prefill_first_max_share must be in (0, 1], got "
                             f"{self.prefill_first_max_share}")
        if self.num_pages is not None and self.num_pages < 2:
            raise ValueError(f"num_pages must be at least 2, got {self.num_pages}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if not 0.0 <= self.pin_budget_fraction <= 1.0:
            raise ValueError("pin_budget_fraction must be in [0, 1]")
        if self.host_tier_gb < 0:
            raise ValueError("host_tier_gb must be >= 0")
        if self.speculative_drafter not in DRAFTERS:
            raise ValueError(f"speculative_drafter must be one of {DRAFTERS}, got "
                             f"{self.speculative_drafter!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError("num_speculative_tokens must be in [1, 16]")
        if self.speculative_draft_layers < 0:
            raise ValueError("speculative_draft_layers must be >= 0 (0: half the model's)")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.graph_attention not in ("auto", "flashinfer", "triton"):
            raise ValueError("graph_attention must be one of auto, flashinfer, triton, got "
                             f"{self.graph_attention!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.tensor_parallel_size > 1 and self.speculative_drafter == "self":
            # Its draft forward runs model layers on rank 0 alone: the other ranks never join.
            raise ValueError("speculative_drafter 'self' does not run with tensor parallelism")

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    def scheduler_config(self, num_pages: int, max_model_len: int,
                         host_tier_pages: int = 0) -> SchedulerConfig:
        return SchedulerConfig(
            pin_budget_pages=int(num_pages * self.pin_budget_fraction),
            host_tier_pages=host_tier_pages,
            num_pages=num_pages,
            page_size=self.page_size,
            max_model_len=max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            prefill_first_tokens=self.prefill_first_tokens,
            prefill_first_max_share=self.prefill_first_max_share,
            enable_prefix_caching=self.enable_prefix_caching,
        )
