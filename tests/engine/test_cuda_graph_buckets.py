"""Bucket choice and decode-batch padding of the CUDA-graph runner, on CPU with exact values."""

from __future__ import annotations

import pytest

from engine.cuda_graphs import SCRATCH_PAGE, bucket_sizes, choose_bucket, pad_decode_batch


def test_bucket_sizes_double_up_to_the_maximum() -> None:
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_choose_bucket_takes_the_smallest_that_fits() -> None:
    buckets = bucket_sizes(48)
    assert [choose_bucket(n, buckets) for n in (1, 2, 3, 5, 17, 33, 48)] == [
        1, 2, 4, 8, 32, 48, 48]
    assert choose_bucket(49, buckets) is None  # oversized: eager
    assert choose_bucket(0, buckets) is None


def test_pad_decode_batch_lays_out_rows_and_padding() -> None:
    # page_size 4; seq A: 6 tokens on pages [7, 3]; seq B: 4 tokens on page [5] (+ a spare 9).
    out = pad_decode_batch(4, [11, 22], [6, 4], [[7, 3], [5, 9]], page_size=4)
    assert out.input_ids == [11, 22, 0, 0]
    assert out.positions == [5, 3, 0, 0]
    assert out.slot_mapping == [3 * 4 + 1, 5 * 4 + 3, 0, 0]  # padding writes scratch slot 0
    assert out.kv_indptr == [0, 2, 3, 4, 5]
    assert out.kv_indices == [7, 3, 5, SCRATCH_PAGE, SCRATCH_PAGE]
    assert out.kv_last_page_len == [2, 4, 1, 1]


def test_pad_decode_batch_full_bucket_has_no_padding() -> None:
    out = pad_decode_batch(1, [5], [17], [[1, 2, 3, 4, 6]], page_size=4)
    assert out.positions == [16]
    assert out.slot_mapping == [6 * 4 + 0]
    assert out.kv_indptr == [0, 5]
    assert out.kv_last_page_len == [1]


def test_pad_decode_batch_rejects_bad_input() -> None:
    with pytest.raises(AssertionError, match="do not fit"):
        pad_decode_batch(1, [1, 2], [1, 1], [[1], [2]], page_size=4)
    with pytest.raises(AssertionError, match="scratch page"):
        pad_decode_batch(2, [1], [3], [[SCRATCH_PAGE]], page_size=4)
    with pytest.raises(AssertionError, match="shorter"):
        pad_decode_batch(2, [1], [9], [[1, 2]], page_size=4)


def test_capture_batch_is_all_padding_on_the_scratch_page() -> None:
    """Graphs are captured on an all-padding batch: nothing but the scratch page is touched."""
    out = pad_decode_batch(2, [], [], [], page_size=4)
    assert out.input_ids == [0, 0] and out.positions == [0, 0]
    assert out.slot_mapping == [SCRATCH_PAGE * 4] * 2
    assert out.kv_indices == [SCRATCH_PAGE] * 2 and out.kv_indptr == [0, 1, 2]


@pytest.mark.parametrize(("numel", "itemsize", "programs"),
                         [(4096 * 4096, 2, 512), (8 << 20, 2, 1024), (100, 2, 512), (1, 4, 8),
                          (3 << 20, 2, 96)])
def test_prefetch_lines_cover_the_range_in_a_power_of_two_each(numel, itemsize, programs):
    from engine.graph_attention import L2_LINE_BYTES, prefetch_lines

    lines = prefetch_lines(numel, itemsize, programs)
    assert lines & (lines - 1) == 0, "tl.arange needs a power of two"
    covered = lines * programs * L2_LINE_BYTES
    assert covered >= numel * itemsize
    assert lines == 1 or (lines // 2) * programs * L2_LINE_BYTES < numel * itemsize  # no more


def test_o_proj_weights_in_layer_order(tiny_qwen3_path) -> None:
    import torch

    from engine.cuda_graphs import o_proj_weights
    from engine.llm import LLM

    model = LLM(tiny_qwen3_path, enforce_eager=True).engine.runner.model
    weights = o_proj_weights(model)
    assert weights is not None and len(weights) == len(model.layers)
    assert all(w is layer.self_attn.o_proj.weight for w, layer in zip(weights, model.layers))
    assert o_proj_weights(torch.nn.Linear(2, 2)) is None


def test_graph_attention_prefetch_arguments_per_layer() -> None:
    """What the decode kernel gets per layer: the layer's weight, the bytes asked for (capped at
    the weight), lines covering them over the grid; nothing without weights or bytes."""
    import torch

    from engine.graph_attention import L2_LINE_BYTES, PREFETCH_MAX_KV, TritonGraphAttention
    from kernels.kv_cache import KVCache

    cache = KVCache(num_layers=2, num_pages=4, page_size=16, num_kv_heads=2, head_dim=8,
                    dtype=torch.bfloat16, device="cpu")
    zeros = torch.zeros(2, dtype=torch.int64)

    def attention(prefetch, prefetch_bytes):
        return TritonGraphAttention(cache, 4, 1.0, zeros, zeros.int(), zeros, zeros, 8,
                                    prefetch=prefetch, prefetch_bytes=prefetch_bytes)

    weights = [torch.zeros(64, 64, dtype=torch.bfloat16) for _ in range(2)]
    args = attention(weights, 4096).prefetch
    assert [a["PREFETCH"] for a in args] == weights
    assert all(a["prefetch_numel"] == 2048 and a["prefetch_max_kv"] == PREFETCH_MAX_KV
               and a["PREFETCH_LINE"] == L2_LINE_BYTES // 2 for a in args)
    assert args[0]["PREFETCH_LINES"] * 2 * 2 * 8 * L2_LINE_BYTES >= 4096  # bucket x heads x splits
    assert attention(weights, 1 << 30).prefetch[0]["prefetch_numel"] == 64 * 64  # capped
    assert attention(None, 4096).prefetch == [] and attention(weights, 0).prefetch == []
