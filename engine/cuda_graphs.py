"""CUDA graphs for decode steps: one graph per bucketed batch size, captured at start-up.

A decode step (every sequence brings one token) launches ~10 kernels per layer; at batch 1 on
an 8B model the launches, not the GPU, set the pace. Each bucket size ``B`` (1, 2, 4, 8, ...,
up to ``max_num_seqs``) gets a graph of the whole forward (embedding .. final norm) over
persistent device buffers, replayed after copying the step's inputs into them.

A batch of ``n`` sequences runs in the smallest bucket ``B >= n``: rows ``n .. B-1`` are
padding that attend to one token of the scratch page 0 and write their KV there (``PagePool``
never hands out page 0), so they never touch a live sequence. Prefill, mixed and oversized
batches run eagerly.

Inputs reach the device in two pinned host->device copies per step (int64 ids, positions,
slots and the paged CSR offsets; int32 page indices), plus FlashInfer's plan copies (pinned,
asynchronous) when the graphs use FlashInfer (``engine.graph_attention``); nothing here waits
on the device. ``pad_decode_batch`` is pure Python so the padding rules are tested on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.graph_attention import (
    GRAPH_ATTENTION_KINDS,
    PREFETCH_MAX_BUCKET,
    PREFETCH_O_BYTES,
    FlashInferGraphAttention,
    GraphAttention,
    TritonGraphAttention,
    triton_graph_splits,
)
from kernels.kv_cache import KVCache

logger = logging.getLogger(__name__)

SCRATCH_PAGE = 0  # never allocated to a sequence: padding rows read and write here


def bucket_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, ... up to and including ``max_batch_size`` (the last need not be a power)."""
    assert max_batch_size >= 1, "max_batch_size must be >= 1"
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return sizes


def choose_bucket(num_seqs: int, buckets: list[int]) -> int | None:
    """The smallest bucket holding ``num_seqs`` rows, or None (run eagerly)."""
    return next((b for b in buckets if b >= num_seqs), None) if num_seqs > 0 else None


@dataclass(frozen=True)
class DecodeInputs:
    """One decode step padded to ``bucket`` rows, as flat host lists."""

    input_ids: list[int]  # (bucket,)
    positions: list[int]  # (bucket,)
    slot_mapping: list[int]  # (bucket,) cache slot each row writes
    kv_indptr: list[int]  # (bucket + 1,) CSR offsets into kv_indices
    kv_indices: list[int]  # (kv_indptr[-1],) page ids of every row's context
    kv_last_page_len: list[int]  # (bucket,) tokens in each row's last page, 1..page_size


def padded_kv_layout(bucket: int, kv_lens: list[int], page_table: list[list[int]],
                     page_size: int) -> tuple[list[int], list[int], list[int]]:
    """(indptr, indices, last_page_len) of ``n <= bucket`` rows plus one-token padding rows on
    the scratch page, in FlashInfer's paged CSR layout."""
    assert 0 <= len(kv_lens) <= bucket, f"{len(kv_lens)} sequences do not fit bucket {bucket}"
    indptr, indices, last = [0], [], []
    for kv_len, pages in zip(kv_lens, page_table):
        num_pages = -(-kv_len // page_size)
        assert kv_len >= 1 and len(pages) >= num_pages, "page table shorter than the context"
        assert SCRATCH_PAGE not in pages[:num_pages], "a live sequence owns the scratch page"
        indices.extend(pages[:num_pages])
        indptr.append(len(indices))
        last.append(kv_len - (num_pages - 1) * page_size)
    for _ in range(bucket - len(kv_lens)):
        indices.append(SCRATCH_PAGE)
        indptr.append(len(indices))
        last.append(1)
    return indptr, indices, last


def pad_decode_batch(
    bucket: int,
    input_ids: list[int],  # (n,) the token each sequence feeds
    kv_lens: list[int],  # (n,) context length including that token
    page_table: list[list[int]],  # (n, >= ceil(kv_len / page_size)) page ids
    page_size: int,
) -> DecodeInputs:
    """Lay out a decode batch of ``n <= bucket`` sequences plus ``bucket - n`` padding rows.

    The new token of sequence ``i`` sits at position ``kv_lens[i] - 1``; padding rows feed token
    0 at position 0 into slot 0 of the scratch page, with a one-token context on that page.
    """
    n = len(input_ids)
    assert n == len(kv_lens) == len(page_table), "ragged decode batch"
    indptr, indices, last = padded_kv_layout(bucket, kv_lens, page_table, page_size)
    positions = [kv_len - 1 for kv_len in kv_lens]
    slots = [pages[pos // page_size] * page_size + pos % page_size
             for pos, pages in zip(positions, page_table)]
    pad = bucket - n
    return DecodeInputs(
        input_ids=list(input_ids) + [0] * pad,
        positions=positions + [0] * pad,
        slot_mapping=slots + [SCRATCH_PAGE * page_size] * pad,
        kv_indptr=indptr,
        kv_indices=indices,
        kv_last_page_len=last,
    )


def o_proj_weights(model: torch.nn.Module) -> list[torch.Tensor] | None:
    """Each decoder layer's attention output projection weight, in layer order (what the
    graphs' attention may prefetch: ``engine.graph_attention.PREFETCH_O_BYTES``); None for a
    model not laid out that way."""
    try:
        return [layer.self_attn.o_proj.weight for layer in model.layers]
    except AttributeError:
        return None


class _Bucket:
    """Persistent buffers, attention and captured graph of one batch size."""

    def __init__(self, runner: CudaGraphRunner, size: int) -> None:
        self.size = size
        device = runner.kv_cache.device
        # ids | positions | slots | kv_indptr | kv_last_page_len in one int64 buffer: one
        # host->device copy fills all five.
        self.inputs_gpu = torch.zeros(5 * size + 1, dtype=torch.int64, device=device)
        self.inputs_cpu = torch.zeros(5 * size + 1, dtype=torch.int64, pin_memory=True)
        self.indices_cpu = torch.zeros(runner.max_pages, dtype=torch.int32, pin_memory=True)
        self.indptr_cpu = torch.zeros(size + 1, dtype=torch.int32, pin_memory=True)
        self.last_cpu = torch.zeros(size, dtype=torch.int32, pin_memory=True)
        self.staged_indices_gpu = torch.zeros(runner.max_pages, dtype=torch.int32, device=device)
        slots = self.inputs_gpu[2 * size:3 * size]
        common = (runner.kv_cache, runner.num_q_heads, runner.scale, slots)
        if runner.attention == "triton":
            prefetch = (o_proj_weights(runner.model)
                        if PREFETCH_O_BYTES and size <= PREFETCH_MAX_BUCKET else None)
            self.attn: GraphAttention = TritonGraphAttention(
                *common, self.staged_indices_gpu, self.inputs_gpu[3 * size:4 * size + 1],
                self.inputs_gpu[4 * size + 1:],
                triton_graph_splits(size, runner.kv_cache.num_kv_heads, runner.num_sms),
                prefetch=prefetch, prefetch_bytes=PREFETCH_O_BYTES)
        else:
            self.attn = FlashInferGraphAttention(
                *common, torch.zeros(runner.max_pages, dtype=torch.int32, device=device),
                runner.workspace)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # (size, vocab) float32, written by the graph
        # Recorded after this bucket's staging copies and plan: the pinned buffers may be
        # refilled once it has passed (with overlap scheduling the step before this one may
        # still be queued when the next is prepared).
        self.staged = torch.cuda.Event()

    def load(self, inputs: DecodeInputs) -> None:
        """Copy one padded step into the persistent buffers and plan attention; no sync."""
        b = self.size
        self.staged.synchronize()  # the last load's copies ran (no-op before the first record)
        host = self.inputs_cpu
        host[:b] = torch.tensor(inputs.input_ids, dtype=torch.int64)
        host[b:2 * b] = torch.tensor(inputs.positions, dtype=torch.int64)
        host[2 * b:3 * b] = torch.tensor(inputs.slot_mapping, dtype=torch.int64)
        self.indptr_cpu.copy_(torch.tensor(inputs.kv_indptr, dtype=torch.int32))
        self.last_cpu.copy_(torch.tensor(inputs.kv_last_page_len, dtype=torch.int32))
        host[3 * b:4 * b + 1] = self.indptr_cpu
        host[4 * b + 1:] = self.last_cpu
        self.inputs_gpu.copy_(host, non_blocking=True)
        num_indices = len(inputs.kv_indices)
        self.indices_cpu[:num_indices] = torch.tensor(inputs.kv_indices, dtype=torch.int32)
        indices_gpu = self.staged_indices_gpu[:num_indices]
        indices_gpu.copy_(self.indices_cpu[:num_indices], non_blocking=True)
        self.attn.plan_step(self.indptr_cpu, indices_gpu, self.last_cpu)
        self.staged.record()

    def forward(self, model: torch.nn.Module) -> torch.Tensor:
        """The whole decode step up to float32 logits (LM head included)."""
        b = self.size
        hidden = model(self.inputs_gpu[:b], self.inputs_gpu[b:2 * b], self.attn)
        return model.compute_logits(hidden)


class CudaGraphRunner:
    """Captures and replays decode graphs of ``model`` for the bucket sizes up to a maximum.

    Owns its buffers and graphs (and a FlashInfer workspace when FlashInfer attends); shares
    the model and the KV cache with nothing else running concurrently (one step at a time).
    """

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, num_q_heads: int,
                 scale: float, max_batch_size: int, max_model_len: int,
                 attention: str = "triton") -> None:
        assert attention in GRAPH_ATTENTION_KINDS, f"unknown graph attention {attention!r}"
        self.attention = attention
        self.num_sms = torch.cuda.get_device_properties(kv_cache.device).multi_processor_count
        self.model = model
        self.kv_cache = kv_cache
        self.num_q_heads = num_q_heads
        self.scale = scale
        self.page_size = kv_cache.page_size
        self.buckets = bucket_sizes(max_batch_size)
        pages_per_seq = -(-max_model_len // self.page_size)
        self.max_pages = max(self.buckets) * pages_per_seq
        self.workspace = (torch.zeros(128 << 20, dtype=torch.uint8, device=kv_cache.device)
                          if attention == "flashinfer" else None)
        self._buckets: dict[int, _Bucket] = {}

    def can_run(self, num_seqs: int) -> bool:
        return choose_bucket(num_seqs, self.buckets) is not None

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so the smaller ones reuse its memory pool."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.buckets):
            bucket = _Bucket(self, size)
            bucket.load(pad_decode_batch(size, [], [], [], self.page_size))  # all padding rows:
            # capture reads and writes the scratch page only, never a page a sequence may own
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up: Triton/FlashInfer launch paths
                bucket.forward(self.model)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                bucket.logits = bucket.forward(self.model)
            bucket.graph = graph
            self._buckets[size] = bucket
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def run(
        self,
        input_ids: list[int],  # (n,)
        kv_lens: list[int],  # (n,)
        page_table: list[list[int]],  # (n, ...)
        fill: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (n, vocab) float32 logits, valid until the next replay
        """Replay the bucket of ``len(input_ids)`` rows. ``fill`` = (rows, token ids), both on
        the device: input ids still on the device (overlap scheduling) written over the
        placeholders of those rows before the replay, in stream order."""
        bucket = self._buckets[choose_bucket(len(input_ids), self.buckets)]
        bucket.load(pad_decode_batch(bucket.size, input_ids, kv_lens, page_table,
                                     self.page_size))
        if fill is not None:
            bucket.inputs_gpu.index_copy_(0, *fill)
        bucket.graph.replay()
        return bucket.logits[: len(input_ids)]
