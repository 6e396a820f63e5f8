"""Every GPU kernel against the float32 torch reference on random bf16 inputs (CUDA only).

Attention runs over batch sizes x context lengths x page sizes x head layouts, for an all-decode
batch and a mixed one (extend after a prefix, decode, and whole-prompt prefill rows together).
The bound is 1e-2 relative error. FlashInfer compiles its kernels on first use per head_dim
(minutes on a fresh host); ``benchmarks/flashinfer_warmup.py`` can do that ahead, in parallel.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.kernels.attention_cases import make_case, rel_err, run_backend, run_graph_attention

pytestmark = pytest.mark.gpu

TOL = 1e-2
DEVICE = "cuda"
BATCH_SIZES = [1, 4, 33]
CONTEXTS = [1, 17, 300, 2048]
PAGE_SIZES = [1, 16]
HEADS = [(32, 8), (9, 3), (64, 8)]
HEAD_DIMS = [64, 128]


def batch_lens(mode: str, batch_size: int, context: int) -> tuple[list[int], list[int]]:
    """(q_lens, kv_lens): contexts spread over [context / 2, context]; in "mixed", rows cycle
    through extend-after-prefix, decode and whole-prompt prefill."""
    kv_lens = [max(1, context - (i * 37) % max(1, context // 2)) for i in range(batch_size)]
    if mode == "decode":
        return [1] * batch_size, kv_lens
    return [(max(1, kv // 3), 1, kv)[i % 3] for i, kv in enumerate(kv_lens)], kv_lens


# ---------------------------------------------------------------- fused ops


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("num_tokens,hidden", [(1, 4096), (33, 896), (300, 5120)])
def test_rmsnorm(num_tokens: int, hidden: int, with_residual: bool) -> None:
    from kernels.ops import rmsnorm, rmsnorm_ref

    x = torch.randn(num_tokens, hidden, device=DEVICE, dtype=torch.bfloat16)
    w = (torch.rand(hidden, device=DEVICE) + 0.5).to(torch.bfloat16)
    r = torch.randn_like(x) if with_residual else None
    out, new_r = rmsnorm(x, w, 1e-6, r)
    ref, ref_r = rmsnorm_ref(x.float(), w.float(), 1e-6, None if r is None else r.float())
    assert rel_err(out, ref) < TOL
    assert rel_err(new_r, ref_r) < TOL


@pytest.mark.parametrize("with_norm", [False, True])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_rope(heads: tuple[int, int], head_dim: int, with_norm: bool) -> None:
    from kernels.ops import apply_rope, rope_ref

    num_tokens, (hq, hk) = 77, heads
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * head_dim, device=DEVICE, dtype=torch.bfloat16)
    q = qkv[:, : hq * head_dim].view(num_tokens, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hk) * head_dim].view(num_tokens, hk, head_dim)
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim)
    freqs = torch.outer(torch.arange(4096, device=DEVICE).float(), inv_freq)
    cos, sin = freqs.cos(), freqs.sin()
    positions = torch.randint(0, 4096, (num_tokens,), device=DEVICE)
    qw = (torch.rand(head_dim, device=DEVICE) + 0.5).to(torch.bfloat16) if with_norm else None
    kw = (torch.rand(head_dim, device=DEVICE) + 0.5).to(torch.bfloat16) if with_norm else None
    q_ref, k_ref = q.float(), k.float()
    rope_ref(positions, q_ref, k_ref, cos, sin,
             None if qw is None else qw.float(), None if kw is None else kw.float())
    apply_rope(positions, q, k, cos, sin, qw, kw)
    assert rel_err(q, q_ref) < TOL
    assert rel_err(k, k_ref) < TOL


@pytest.mark.parametrize("num_tokens,d", [(1, 12288), (45, 4864), (512, 1536)])
def test_silu_mul(num_tokens: int, d: int) -> None:
    from kernels.ops import silu_mul, silu_mul_ref

    x = torch.randn(num_tokens, 2 * d, device=DEVICE, dtype=torch.bfloat16)
    assert rel_err(silu_mul(x), silu_mul_ref(x.float())) < TOL


@pytest.mark.parametrize("heads", [(8, 128), (3, 64)])
def test_kv_store(heads: tuple[int, int]) -> None:
    from kernels.ops import kv_store, kv_store_ref

    num_kv_heads, head_dim = heads
    k_cache = torch.randn(64, 16, num_kv_heads, head_dim, device=DEVICE).to(torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv = torch.randn(100, 2 * num_kv_heads * head_dim, device=DEVICE, dtype=torch.bfloat16)
    k, v = (t.view(100, num_kv_heads, head_dim) for t in kv.chunk(2, dim=-1))
    slots = torch.randperm(64 * 16, device=DEVICE)[:100]
    kv_store(k_cache, v_cache, slots, k, v)
    kv_store_ref(k_ref, v_ref, slots, k, v)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


# ---------------------------------------------------------------- attention


def _check_attention(backend: str, mode: str, batch_size: int, context: int, page_size: int,
                     heads: tuple[int, int], head_dim: int) -> None:
    q_lens, kv_lens = batch_lens(mode, batch_size, context)
    case = make_case(q_lens, kv_lens, page_size, heads[0], heads[1], head_dim, torch.bfloat16,
                     DEVICE, seed=batch_size * 7919 + context)
    out, ref = run_backend(backend, case)
    err = rel_err(out, ref)
    assert err < TOL, f"{backend} {mode}: relative error {err:.3e}"


def _grid(fn):
    """The attention grid: 2 modes x 3 batch sizes x 4 contexts x 2 page sizes x 6 heads."""
    marks = [
        pytest.mark.parametrize("head_dim", HEAD_DIMS),
        pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}x{h[1]}"),
        pytest.mark.parametrize("page_size", PAGE_SIZES),
        pytest.mark.parametrize("context", CONTEXTS),
        pytest.mark.parametrize("batch_size", BATCH_SIZES),
        pytest.mark.parametrize("mode", ["decode", "mixed"]),
    ]
    for mark in marks:
        fn = mark(fn)
    return fn


@_grid
def test_triton_attention(mode, batch_size, context, page_size, heads, head_dim) -> None:
    _check_attention("triton", mode, batch_size, context, page_size, heads, head_dim)


@_grid
def test_flashinfer_attention(mode, batch_size, context, page_size, heads, head_dim) -> None:
    pytest.importorskip("flashinfer")
    _check_attention("flashinfer", mode, batch_size, context, page_size, heads, head_dim)


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_plans_queued_behind_device_work(backend: str) -> None:
    """Two batches planned and run while the device is still busy with earlier work, as the
    engine does when chunked prefill steps run ahead of the device: each batch must run with
    its own plan (FlashInfer's plan reuses one page-locked buffer for its asynchronous copy)."""
    from kernels.attention import AttentionBatch, create_backend
    from tests.kernels.attention_cases import reference

    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    case = make_case([5, 300, 1], [700, 900, 513], 16, 32, 8, 128, torch.bfloat16, DEVICE)
    expected, _ = reference(case)
    attn = create_backend(backend, case.cache, case.num_q_heads, case.scale)
    q, k, v, batch = case.q, case.k, case.v, case.batch
    # The last two queries of the first sequence alone: the same rows of the same context.
    tail = AttentionBatch([2], [700], batch.page_table[:1], batch.slot_mapping[3:5])
    for _ in range(2):  # the first round builds the kernels, the second queues behind a sleep
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)  # ~0.1 s of device time ahead of both plans
        attn.plan(batch)
        out_all = attn.forward(0, q, k, v)
        attn.plan(tail)
        out_tail = attn.forward(0, q[3:5], k[3:5], v[3:5])
        torch.cuda.synchronize()
        assert rel_err(out_all, expected) < TOL
        assert rel_err(out_tail, expected[3:5]) < TOL


@pytest.mark.parametrize("kind", ["triton", "flashinfer"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}x{h[1]}")
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_graph_attention(kind, batch_size, context, page_size, heads, head_dim) -> None:
    """The decode graphs' attention, padded to the next bucket, with the split count the
    graphs would use for it (and a fixed 8 for Triton: short contexts leave splits empty)."""
    from engine.graph_attention import triton_graph_splits

    if kind == "flashinfer":
        pytest.importorskip("flashinfer")
    q_lens, kv_lens = batch_lens("decode", batch_size, context)
    case = make_case(q_lens, kv_lens, page_size, heads[0], heads[1], head_dim, torch.bfloat16,
                     DEVICE, seed=batch_size * 31 + context)
    bucket = 1 << (batch_size - 1).bit_length()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    splits = triton_graph_splits(bucket, heads[1], sms) if context != 300 else 8
    out, ref = run_graph_attention(kind, case, bucket, splits)
    err = rel_err(out, ref)
    assert err < TOL, f"{kind} graph attention: relative error {err:.3e}"


@pytest.mark.parametrize("prefetch_mb", [1, 16, 64])
@pytest.mark.parametrize("context", [640, 6000])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_graph_attention_l2_prefetch_changes_no_output(batch_size, context, prefetch_mb) -> None:
    """The decode kernel's L2 prefetch of a weight (AGENTSPEED_PREFETCH_O_MB; 64 MB asks past
    the end of this 32 MB weight: the addresses clamp; rows past PREFETCH_MAX_KV skip it)
    compiles and leaves the output bit for bit as without it."""
    q_lens, kv_lens = batch_lens("decode", batch_size, context)
    weight = torch.randn(4096, 4096, device=DEVICE).to(torch.bfloat16)

    def run(prefetch_bytes: int) -> torch.Tensor:
        case = make_case(q_lens, kv_lens, 16, 32, 8, 128, torch.bfloat16, DEVICE, seed=5)
        return run_graph_attention("triton", case, batch_size, 64, weight if prefetch_bytes
                                   else None, prefetch_bytes)[0]

    torch.testing.assert_close(run(prefetch_mb << 20), run(0), rtol=0, atol=0)


@pytest.mark.parametrize("silu_mul", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 12288), (151936, 4096), (1000, 200)])
def test_gemv(shape: tuple[int, int], rows: int, with_bias: bool, silu_mul: bool) -> None:
    """The GEMV (and with ``silu_mul`` its fused ``silu(gate) * up`` input) against float32."""
    from kernels.ops.gemv import gemv_config, gemv_triton
    from kernels.ops.silu_mul import silu_mul_ref

    n, k = shape
    x = torch.randn(rows, 2 * k if silu_mul else k, device=DEVICE, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=DEVICE, dtype=torch.bfloat16) * 0.02
    b = torch.randn(n, device=DEVICE, dtype=torch.bfloat16) if with_bias else None
    act = silu_mul_ref(x.float()) if silu_mul else x.float()
    ref = act @ w.float().t() + (b.float() if with_bias else 0)
    out = gemv_triton(x, w, b, config=gemv_config(rows, n) or (8, 512, 4), silu_mul=silu_mul)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, n)
    err = rel_err(out, ref)
    assert err < TOL, f"gemv {rows}x{k} @ {n}x{k}: relative error {err:.3e}"


def test_auto_backend_prefers_triton() -> None:
    from kernels.attention import create_backend
    from kernels.kv_cache import KVCache

    cache = KVCache(1, 4, 16, 2, 64, torch.bfloat16, DEVICE)
    expected = "triton" if importlib.util.find_spec("triton") else "flashinfer"
    assert create_backend("auto", cache, 4, 0.125).name == expected


def _pdl_chain(x0, weights, cos, sin, k_cache, v_cache, pos, slot):
    """Dependent fused ops the way a decode layer chains them: RMSNorm + residual -> qk GEMV
    -> q/k norm + RoPE in place -> KV store -> o GEMV -> down GEMV with SiLU fused."""
    from kernels.ops import gemv_triton, kv_store_triton, rmsnorm_triton, rope_triton

    x, residual = x0, x0
    for g, w_qk, w_o, w_down, qn, kn in weights:
        h, residual = rmsnorm_triton(x, g, 1e-6, residual)
        qk = gemv_triton(h, w_qk, config=(8, 512, 4))
        q, k = qk[:, :4096].view(1, 32, 128), qk[:, 4096:].view(1, 8, 128)
        rope_triton(pos, q, k, cos, sin, qn, kn, 1e-6)
        kv_store_triton(k_cache, v_cache, slot, k, k)
        o = gemv_triton(q.reshape(1, 4096), w_o, config=(4, 512, 4))
        x = gemv_triton(torch.cat([o, o], dim=1), w_down, config=(4, 512, 4), silu_mul=True)
    return x, residual


def test_pdl_chain_in_graph_is_bit_identical() -> None:
    """Under programmatic dependent launch every kernel may start before the one it depends on
    has finished; captured in a CUDA graph and replayed on fresh inputs, the chain must give
    exactly what ordinary launches give (a kernel that read its input early would not)."""
    from kernels._triton import set_pdl

    torch.manual_seed(11)
    bf = dict(device=DEVICE, dtype=torch.bfloat16)
    weights = [(torch.rand(4096, **bf) + 0.5, torch.randn(5120, 4096, **bf) * 0.02,
                torch.randn(4096, 4096, **bf) * 0.02, torch.randn(4096, 4096, **bf) * 0.02,
                torch.rand(128, **bf) + 0.5, torch.rand(128, **bf) + 0.5) for _ in range(4)]
    freqs = torch.rand(8, 64, device=DEVICE) * 3
    cos, sin = freqs.cos(), freqs.sin()
    caches = [torch.zeros(8, 8, 128, **bf) for _ in range(4)]
    static_x = torch.randn(1, 4096, **bf)
    idx = (torch.full((1,), 5, dtype=torch.int64, device=DEVICE),  # position, slot
           torch.full((1,), 3, dtype=torch.int64, device=DEVICE))
    previous = set_pdl(True)
    try:
        _pdl_chain(static_x, weights, cos, sin, caches[0], caches[1], *idx)  # compile
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _pdl_chain(static_x, weights, cos, sin, caches[0], caches[1], *idx)
    finally:
        set_pdl(previous)
    for seed in range(3):
        torch.manual_seed(100 + seed)
        x = torch.randn(1, 4096, **bf)
        static_x.copy_(x)
        graph.replay()
        previous = set_pdl(False)
        try:
            ref = _pdl_chain(x, weights, cos, sin, caches[2], caches[3], *idx)
        finally:
            set_pdl(previous)
        torch.cuda.synchronize()
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        assert torch.equal(caches[0], caches[2])
