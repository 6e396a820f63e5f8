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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.config import EngineConfig
from engine.cuda_graphs import SCRATCH_PAGE, CudaGraphRunner
from engine.default_model import eos_token_ids, resolve_model
from engine.host_tier import HostTier
from engine.loader import load_model
from engine.parallel import setup_tensor_parallel
from engine.sampler import SampledToken, Sampler, SampleRow, make_generator, needs_host
from engine.scheduler import SchedulerOutput
from engine.step_batch import StepBatch, build_step_batch
from engine.tokenizer import load_tokenizer
from kernels._triton import HAS_TRITON, pack_aligned, set_pdl, track_kernel_builds
from kernels.attention import AttentionBatch, KVCache, create_backend
from kernels.ops import set_gemv

if TYPE_CHECKING:
    import xgrammar

    from engine.request import Request
    from engine.sampling_params import GrammarSpec
    from engine.structured import GrammarCompiler

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class InFlight:
    """A launched step: its tokens are on the device and on their way to the host."""

    out: SchedulerOutput
    samplers: list[Request]  # the requests that sample, in batch order
    tokens_gpu: torch.Tensor | None  # (num_samplers,) int64; the next overlapped step reads it
    tokens_host: torch.Tensor | None  # (num_samplers,) destination of the one async copy
    done: torch.cuda.Event | None  # recorded after that copy (None off CUDA)
    started: torch.cuda.Event | None = None  # recorded before the step's work (timing)
    launched_at: float = 0.0  # host clock (time.perf_counter) once the step was queued


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
        # Tensor parallelism: join (rank 0: start) the group first; every rank then builds its
        # shard of the model and its own KV pool (engine.parallel).
        self.tp = setup_tensor_parallel(config, resolve_device(config))
        self.device = self.tp.device if self.tp is not None else resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        self.model_path = resolve_model(config.model)
        torch.manual_seed(config.seed)
        self.model, self.hf_config = load_model(
            self.model_path, self.dtype, self.device, config.load_format, tp=self.tp
        )
        self.model.eval()
        self.vocab_size = self.model.vocab_size
        self.eos_token_ids = eos_token_ids(self.hf_config, self.model_path)
        model_len = getattr(self.hf_config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(config.max_model_len or model_len, model_len)
        self.num_pages = config.num_pages or self._auto_num_pages()
        if self.tp is not None:  # one pool size for all ranks: the smallest that fits
            self.num_pages = self.tp.agree_num_pages(config, self.hf_config, self.dtype,
                                                     self.num_pages)
        self.kv_cache = KVCache(
            self.model.num_layers,
            self.num_pages,
            config.page_size,
            self.model.num_kv_heads,
            self.model.head_dim,
            self.dtype,
            self.device,
        )
        self.host_tier = (self.tp.host_tier(self.kv_cache) if self.tp is not None
                          else HostTier(self.kv_cache))
        self.host_tier_pages = int(config.host_tier_gb * (1 << 30)
                                   // (self._kv_bytes_per_token() * config.page_size))
        self.attn = create_backend(
            config.attention_backend, self.kv_cache, self.model.num_heads, self.model.head_dim**-0.5
        )
        self.sampler = Sampler()
        self._grammar_compiler: GrammarCompiler | None = None  # built by the first grammar
        set_gemv(config.gemv)  # read at each call, so captured (or not) into the graphs
        set_pdl(config.pdl)
        if HAS_TRITON:
            track_kernel_builds()  # builds after start-up are stalls: counted for /metrics
        if (self.tp is not None and self.device.type == "cuda"
                and config.tp_one_shot_all_reduce):  # before any graph capture
            rows = self._max_graph_rows()
            one_shot = self.tp.group.enable_one_shot(rows * self.model.hidden_size, self.dtype)
            logger.info("tensor-parallel all-reduce of <= %d rows: %s", rows,
                        "one-shot (symmetric memory)" if one_shot else "NCCL")
        if self.device.type == "cuda":  # every rank: the warm-up's forwards run collectives
            self.warm_up_eager()
        self.graphs = self._capture_graphs()
        # Launched steps record their device time (CUDA events) for the ahead pacer, only
        # while one watches the engine's input (EngineCore.watch_input).
        self.time_steps = False
        logger.info(
            "model %s on %s (%s): %d KV pages of %d tokens, context %d",
            self.model_path, self.device, self.dtype, self.num_pages, config.page_size,
            self.max_model_len,
        )

    @torch.inference_mode()
    def warm_up_eager(self) -> None:
        """Run the eager forward (and LM head) on two synthetic mixed batches, a 2-token extend
        beside one decode row with a short and then a long context, so the kernel variants an
        eager step launches (extend, decode without and with KV splits and their merge, the
        norms, RoPE, the KV store) are built now rather than on the first mixed step of a serve,
        where each build stalls the step for up to a second. Every key and value read or written
        lives on the scratch page, which no sequence owns."""
        ps, page = self.config.page_size, SCRATCH_PAGE
        for decode_len in (1, min(1024, self.max_model_len)):
            q_lens, kv_lens = [2, 1], [2, decode_len]
            positions = [0, 1, decode_len - 1]
            slots = [page * ps + i % ps for i in range(len(positions))]
            table = [[page] * -(-kv // ps) for kv in kv_lens]
            ids, pos, slot_ids, rows = self._upload([0] * len(positions), positions, slots,
                                                    [1, 2])
            self.attn.plan(AttentionBatch(q_lens, kv_lens, table, slot_ids))
            hidden = self.model(ids, pos, self.attn)
            self.model.compute_logits(hidden[rows])

    def _kv_bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        m = self.model
        return 2 * m.num_layers * m.num_kv_heads * m.head_dim * itemsize

    def shutdown(self) -> None:
        """Leave the tensor-parallel group (rank 0: stop the other ranks first); idempotent, a
        no-op without one. The decode graphs, which captured the group's collectives, are
        dropped first: tearing a communicator down under live graphs can block."""
        if self.tp is not None:
            self.graphs = None
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.tp.close()

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
        batch = build_step_batch(out, self.config.page_size)
        logits = self.forward(batch)
        samplers = [s.request for s in out.requests if s.sample]
        return self.sample(logits, samplers, [s.draft_ids for s in out.requests if s.sample])

    @torch.inference_mode()
    def forward(self, batch: StepBatch,
                prev_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """The model over ``batch``: float32 logits of its ``sample_rows`` (None when no row
        samples). Decode batches replay a CUDA graph when one is captured. ``prev_tokens``: the
        previous step's sampled tokens on the device, read by ``batch.prev_rows``."""
        ps = self.config.page_size
        if self.tp is not None and self.tp.is_driver:
            self.tp.send_step(batch)  # the other ranks run this same forward
        fill = None
        if batch.prev_rows:
            dst, src = self._upload([r for r, _ in batch.prev_rows],
                                    [i for _, i in batch.prev_rows])
            values = prev_tokens.index_select(0, src) if prev_tokens is not None else None
            if self.tp is not None:  # rank 0 sampled them; the others get them here
                values = self.tp.share_tokens(values, len(batch.prev_rows))
            assert values is not None, "an overlapped step needs the previous tokens"
            fill = (dst, values)
        if batch.copies:
            src = [p * ps + i for p, _, n in batch.copies for i in range(n)]
            dst = [p * ps + i for _, p, n in batch.copies for i in range(n)]
            self.kv_cache.copy_slots(self._tensor(src), self._tensor(dst))
        if (self.graphs is not None and len(batch.sample_rows) == len(batch.input_ids)
                and self.graphs.can_run(len(batch.input_ids))):
            # Every token samples: a decode step, or a verify step (known token + drafts). Each
            # token is one graph row attending causally up to its own position; all rows store
            # their K/V before any attends, so a draft sees the tokens before it. The graph
            # includes the LM head.
            rows_pages = [pages for pages, n in zip(batch.page_table, batch.q_lens)
                          for _ in range(n)]
            return self.graphs.run(batch.input_ids, [p + 1 for p in batch.positions],
                                   rows_pages, fill)
        ids_gpu, pos_gpu, slots_gpu, rows_gpu = self._upload(
            batch.input_ids, batch.positions, batch.slots, batch.sample_rows)
        if fill is not None:
            ids_gpu.index_copy_(0, *fill)
        self.attn.plan(AttentionBatch(batch.q_lens, batch.kv_lens, batch.page_table,
                                      slots_gpu))
        hidden = self.model(ids_gpu, pos_gpu, self.attn)
        if not batch.sample_rows:
            return None
        if len(batch.sample_rows) < hidden.shape[0]:  # rows are distinct: equal = all rows
            hidden = hidden[rows_gpu]
        return self.model.compute_logits(hidden)

    def sample(
        self, logits: torch.Tensor | None, samplers: list[Request], drafts: list[list[int]]
    ) -> dict[str, list[SampledToken]]:
        """Tokens for ``samplers`` (the requests that sample, in batch order) from ``logits``
        (one row per request, or 1 + len(draft) rows for a request with drafts)."""
        if not samplers:
            return {}
        if logits.shape[0] > len(samplers):
            return self._verify_drafts(logits, samplers, drafts)
        constrained = [i for i, r in enumerate(samplers) if r.params.grammar is not None]
        if constrained:
            self._mask_logits(logits, samplers, constrained)
        rows = self._sample_rows(samplers)
        tokens = self.sampler(logits, rows)
        for i in constrained:
            accepted = samplers[i].grammar_state.accept(tokens[i].token_id)
            assert accepted, f"{samplers[i].request_id}: the grammar refused a token it allowed"
        return {r.request_id: [t] for r, t in zip(samplers, tokens)}

    def _sample_rows(self, samplers: list[Request]) -> list[SampleRow]:
        """The sampler's view of each request; a seeded request gets its generator once."""
        rows = []
        for request in samplers:
            if request.sampler_state is None and request.params.seed is not None:
                request.sampler_state = make_generator(request.params, self.device)
            rows.append(SampleRow(request.params, request.prompt_ids, request.output_ids,
                                  request.sampler_state))
        return rows

    # ------------------------------------------------------------ overlap scheduling
    def can_launch(self, out: SchedulerOutput) -> bool:
        """Whether ``out`` can run without the host seeing its tokens before the next step is
        prepared: no drafts, grammars, penalties or logprobs (they read host state)."""
        return all(not s.draft_ids and s.request.params.grammar is None
                   and not needs_host(s.request.params) for s in out.requests if s.sample)

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, prev: InFlight | None = None) -> InFlight:
        """Queue the step on the device and return at once (see ``can_launch``): tokens stay on
        the device, and one asynchronous copy brings them to the host for ``collect``."""
        batch = build_step_batch(out, self.config.page_size)
        started = None
        if self.time_steps and self.device.type == "cuda":
            started = torch.cuda.Event(enable_timing=True)
            started.record()
        logits = self.forward(batch, prev.tokens_gpu if prev is not None else None)
        samplers = [s.request for s in out.requests if s.sample]
        if not samplers:
            return InFlight(out, samplers, None, None, None, None, time.perf_counter())
        rows = self._sample_rows(samplers)
        tokens = self.sampler.sample_on_device(logits, rows)  # (num_samplers,) int64
        if self.device.type != "cuda":
            return InFlight(out, samplers, tokens, tokens, None, None, time.perf_counter())
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        done = torch.cuda.Event(enable_timing=started is not None)
        done.record()
        return InFlight(out, samplers, tokens, host, done, started, time.perf_counter())

    def collect(self, step: InFlight) -> dict[str, list[SampledToken]]:
        """Wait for a launched step's tokens (the one host synchronisation of a step)."""
        if step.tokens_host is None:
            return {}
        if step.done is not None:
            step.done.synchronize()
        return {r.request_id: [SampledToken(t, None, None)]
                for r, t in zip(step.samplers, step.tokens_host.tolist())}

    # ------------------------------------------------------------ speculative decoding
    def _verify_drafts(
        self, logits: torch.Tensor, samplers: list[Request], drafts: list[list[int]]
    ) -> dict[str, list[SampledToken]]:
        """Sample a step that verifies drafts (``engine.spec.verify``); returns each request's
        accepted drafts plus one token. ``logits``: (sum(1 + len(d) for d in drafts), vocab),
        each request's rows together; an empty draft is a plain one-row request."""
        from engine.spec.verify import verify

        constrained = [i for i, r in enumerate(samplers) if r.params.grammar is not None]
        if constrained:
            self._mask_logits(logits, samplers, constrained, drafts)
        rows = self._sample_rows(samplers)
        results = verify(self.sampler, logits, rows, drafts)
        for i in constrained:
            state = samplers[i].grammar_state
            for token in results[i]:
                if state.is_terminated():
                    break  # tokens after a stop token are dropped by the scheduler
                accepted = state.accept(token.token_id)
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
        self, logits: torch.Tensor, samplers: list[Request], constrained: list[int],
        drafts: list[list[int]] | None = None,
    ) -> None:
        """``engine.structured.mask_logits`` with this engine's vocabulary and compiler."""
        from engine.structured import mask_logits

        mask_logits(logits, samplers, constrained, self.vocab_size, self.compile_grammar, drafts)

    # ------------------------------------------------------------ fast path
    def _capture_graphs(self) -> CudaGraphRunner | None:
        """Decode CUDA graphs when on CUDA with FlashInfer or Triton attention, unless
        ``enforce_eager``; their attention is ``graph_attention`` (auto: Triton if installed)."""
        config = self.config
        if (config.enforce_eager or self.device.type != "cuda"
                or self.attn.name not in ("flashinfer", "triton")):
            return None
        attention = config.graph_attention
        if attention == "auto":
            attention = "triton" if HAS_TRITON else self.attn.name
        max_rows = self._max_graph_rows()
        graphs = CudaGraphRunner(self.model, self.kv_cache, self.model.num_heads,
                                 self.model.head_dim**-0.5, max_rows, self.max_model_len,
                                 attention)
        graphs.capture()
        return graphs

    def _max_graph_rows(self) -> int:
        """Rows of the largest decode graph: a batch, or a verify step's one row per token."""
        config = self.config
        max_rows = config.max_num_seqs
        if config.speculative_drafter != "none":
            from engine.spec.manager import MAX_BATCH

            max_rows = max(max_rows, min(max_rows, MAX_BATCH)
                           * (config.num_speculative_tokens + 1))
        return max_rows

    def _upload(self, *lists: list[int]) -> list[torch.Tensor]:
        """int64 device tensors of ``lists`` through one pinned host->device copy (no sync),
        each 16-byte aligned (``pack_aligned``: no Triton recompiles mid-serve)."""
        return pack_aligned(list(lists), torch.int64, self.device, pin=True)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)
