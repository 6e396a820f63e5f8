"""Runs one scheduled step on the device: build the flat batch, forward, sample.

The runner owns the model, the KV cache, the attention backend, the sampler and the grammar
compiler; it never decides what to run (the scheduler does) and never touches page bookkeeping.

Structured output: a request with ``params.grammar`` gets a ``GrammarState`` (in
``request.grammar_state``) at its first sample; each step its logit row is masked to the tokens
the grammar allows before sampling, and the sampled token is accepted after. Log-probabilities
of such rows therefore describe the masked distribution (disallowed tokens are at -inf).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from engine.config import EngineConfig
from engine.cuda_graphs import CudaGraphRunner
from engine.default_model import eos_token_ids, resolve_model
from engine.host_tier import HostTier
from engine.loader import load_model
from engine.sampler import SampledToken, Sampler, SampleRow, make_generator
from engine.scheduler import SchedulerOutput
from engine.tokenizer import load_tokenizer
from kernels.attention import AttentionBatch, KVCache, create_backend

if TYPE_CHECKING:
    import xgrammar

    from engine.request import Request
    from engine.sampling_params import GrammarSpec
    from engine.structured import GrammarCompiler

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(config: EngineConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(config.device)


def resolve_dtype(config: EngineConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[config.dtype]


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        self.model_path = resolve_model(config.model)
        torch.manual_seed(config.seed)
        self.model, self.hf_config = load_model(
            self.model_path, self.dtype, self.device, config.load_format
        )
        self.model.eval()
        self.vocab_size = self.model.vocab_size
        self.eos_token_ids = eos_token_ids(self.hf_config, self.model_path)
        model_len = getattr(self.hf_config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(config.max_model_len or model_len, model_len)
        self.num_pages = config.num_pages or self._auto_num_pages()
        self.kv_cache = KVCache(
            self.model.num_layers,
            self.num_pages,
            config.page_size,
            self.model.num_kv_heads,
            self.model.head_dim,
            self.dtype,
            self.device,
        )
        self.host_tier = HostTier(self.kv_cache)
        self.host_tier_pages = int(config.host_tier_gb * (1 << 30)
                                   // (self._kv_bytes_per_token() * config.page_size))
        self.attn = create_backend(
            config.attention_backend, self.kv_cache, self.model.num_heads, self.model.head_dim**-0.5
        )
        self.sampler = Sampler()
        self._grammar_compiler: GrammarCompiler | None = None  # built by the first grammar
        self.graphs = self._capture_graphs()
        logger.info(
            "model %s on %s (%s): %d KV pages of %d tokens, context %d",
            self.model_path, self.device, self.dtype, self.num_pages, config.page_size,
            self.max_model_len,
        )

    def _kv_bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        m = self.model
        return 2 * m.num_layers * m.num_kv_heads * m.head_dim * itemsize

    def _auto_num_pages(self) -> int:
        bytes_per_page = self._kv_bytes_per_token() * self.config.page_size
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            reserve = total * (1.0 - self.config.gpu_memory_utilization)
            budget = max(free - reserve, bytes_per_page * 2)
        else:
            budget = self.config.kv_cache_memory_gb * (1 << 30)
        return max(2, int(budget // bytes_per_page))

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[str, list[SampledToken]]:
        """Run the step; returns the sampled token(s) of each request that samples."""
        ps = self.config.page_size
        if out.copies:
            src = [p * ps + i for p, _, n in out.copies for i in range(n)]
            dst = [p * ps + i for _, p, n in out.copies for i in range(n)]
            self.kv_cache.copy_slots(self._tensor(src), self._tensor(dst))
        input_ids, positions, slots = [], [], []
        q_lens, kv_lens, page_table, sample_rows, samplers = [], [], [], [], []
        for scheduled in out.requests:
            request, start, n = scheduled.request, scheduled.start, scheduled.num_new_tokens
            pages = request.page_ids
            input_ids.extend(request.all_ids[start : start + n - len(scheduled.draft_ids)])
            input_ids.extend(scheduled.draft_ids)
            positions.extend(range(start, start + n))
            slots.extend(pages[pos // ps] * ps + pos % ps for pos in range(start, start + n))
            q_lens.append(n)
            kv_lens.append(start + n)
            page_table.append(pages)
            if scheduled.sample:  # with drafts: logits at the last known token and each draft
                sample_rows.extend(range(len(input_ids) - 1 - len(scheduled.draft_ids),
                                         len(input_ids)))
                samplers.append(request)
        if self.graphs is not None and max(q_lens, default=0) == 1 and self.graphs.can_run(
                len(q_lens)):
            hidden = self.graphs.run(input_ids, kv_lens, page_table)
            rows_gpu = None  # every row samples in a decode step
        else:
            ids_gpu, pos_gpu, slots_gpu, rows_gpu = self._upload(
                input_ids, positions, slots, sample_rows)
            self.attn.plan(AttentionBatch(q_lens, kv_lens, page_table, slots_gpu))
            hidden = self.model(ids_gpu, pos_gpu, self.attn)
        if not samplers:
            return {}
        if len(sample_rows) < hidden.shape[0]:  # rows are distinct: equal count means all rows
            hidden = hidden[rows_gpu if rows_gpu is not None else self._tensor(sample_rows)]
        logits = self.model.compute_logits(hidden)
        if len(sample_rows) > len(samplers):
            return self._verify_drafts(logits, samplers, [s.draft_ids for s in out.requests
                                                          if s.sample])
        constrained = [i for i, r in enumerate(samplers) if r.params.grammar is not None]
        if constrained:
            self._mask_logits(logits, samplers, constrained)
        rows = []
        for request in samplers:
            if request.sampler_state is None and request.params.seed is not None:
                request.sampler_state = make_generator(request.params, self.device)
            rows.append(
                SampleRow(request.params, request.prompt_ids, request.output_ids,
                          request.sampler_state)
            )
        tokens = self.sampler(logits, rows)
        for i in constrained:
            accepted = samplers[i].grammar_state.accept(tokens[i].token_id)
            assert accepted, f"{samplers[i].request_id}: the grammar refused a token it allowed"
        return {r.request_id: [t] for r, t in zip(samplers, tokens)}

    # ------------------------------------------------------------ speculative decoding
    def _verify_drafts(
        self, logits: torch.Tensor, samplers: list[Request], drafts: list[list[int]]
    ) -> dict[str, list[SampledToken]]:
        """Sample a step that verifies drafts (``engine.spec.verify``); returns each request's
        accepted drafts plus one token. ``logits``: (sum(1 + len(d) for d in drafts), vocab),
        each request's rows together; an empty draft is a plain one-row request."""
        from engine.spec.verify import verify

        last_rows, row = [], -1
        for draft in drafts:
            row += 1 + len(draft)
            last_rows.append(row)
        constrained = [i for i, r in enumerate(samplers) if r.params.grammar is not None]
        if constrained:
            assert all(not drafts[i] for i in constrained), "constrained requests never draft"
            last_gpu = self._tensor(last_rows)
            last = logits.index_select(0, last_gpu)  # (num_samplers, vocab)
            self._mask_logits(last, samplers, constrained)
            logits.index_copy_(0, last_gpu, last)
        rows = []
        for request in samplers:
            if request.sampler_state is None and request.params.seed is not None:
                request.sampler_state = make_generator(request.params, self.device)
            rows.append(SampleRow(request.params, request.prompt_ids, request.output_ids,
                                  request.sampler_state))
        results = verify(self.sampler, logits, rows, drafts)
        for i in constrained:
            accepted = samplers[i].grammar_state.accept(results[i][0].token_id)
            assert accepted, f"{samplers[i].request_id}: the grammar refused a token it allowed"
        return {r.request_id: tokens for r, tokens in zip(samplers, results)}

    # ------------------------------------------------------------ structured output
    @property
    def grammar_compiler(self) -> GrammarCompiler:
        """The engine's grammar compiler, built on first use: importing xgrammar and building
        the tokenizer info take about 3.5 s on CPU, which engines that never see a grammar skip."""
        if self._grammar_compiler is None:
            from engine.structured import GrammarCompiler, build_tokenizer_info

            info = build_tokenizer_info(
                load_tokenizer(self.model_path), self.vocab_size,
                stop_token_ids=self.eos_token_ids,
            )
            self._grammar_compiler = GrammarCompiler(info)
        return self._grammar_compiler

    def compile_grammar(
        self, spec: GrammarSpec, *, param: str | None = None
    ) -> xgrammar.CompiledGrammar:
        """Compile (or fetch from the cache) ``spec``; raises ``InvalidRequestError``."""
        return self.grammar_compiler.compile(spec, param=param)

    def _mask_logits(
        self, logits: torch.Tensor, samplers: list[Request], constrained: list[int]
    ) -> None:
        """Mask rows ``constrained`` of ``logits`` (num_samplers, vocab) to their grammars."""
        from engine.structured import GrammarState, allocate_bitmask, apply_bitmask

        bitmask = allocate_bitmask(len(samplers), self.vocab_size)  # (num_samplers, vocab / 32)
        masked = []
        for i in constrained:
            request = samplers[i]
            state = request.grammar_state
            if state is None:
                # The grammar's stop tokens are the request's, so it terminates when they stop.
                grammar = self.compile_grammar(request.params.grammar)
                state = GrammarState(grammar, stop_token_ids=sorted(request.stop_ids))
                request.grammar_state = state
            assert state.num_accepted == len(request.output_ids), (
                f"{request.request_id}: grammar saw {state.num_accepted} tokens, "
                f"output has {len(request.output_ids)}"
            )
            if state.fill_bitmask(bitmask, i):
                masked.append(i)
        if masked:
            apply_bitmask(logits, bitmask, rows=masked)

    # ------------------------------------------------------------ fast path
    def _capture_graphs(self) -> CudaGraphRunner | None:
        """Decode CUDA graphs when on CUDA with FlashInfer attention, unless ``enforce_eager``."""
        from kernels.attention.flashinfer_backend import FlashInferAttention

        if (self.config.enforce_eager or self.device.type != "cuda"
                or not isinstance(self.attn, FlashInferAttention)):
            return None
        graphs = CudaGraphRunner(self.model, self.kv_cache, self.model.num_heads,
                                 self.model.head_dim**-0.5, self.config.max_num_seqs,
                                 self.max_model_len)
        graphs.capture()
        return graphs

    def _upload(self, *lists: list[int]) -> list[torch.Tensor]:
        """int64 device tensors of ``lists`` through one pinned host->device copy (no sync)."""
        flat = torch.tensor([v for values in lists for v in values], dtype=torch.int64)
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        return list(flat.to(self.device, non_blocking=True).split([len(v) for v in lists]))

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)
