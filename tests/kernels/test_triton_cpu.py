"""Every Triton kernel under ``TRITON_INTERPRET=1`` on CPU tensors against its torch reference.

The interpreter must be chosen before Triton is imported, so the checks in
``interpreted_checks.py`` run in one subprocess (about 20 s on two cores) and each becomes one
test here. Inputs are tiny, random and float32: the bound is 1e-3 relative error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernels.interpreted_checks import CHECKS

pytest.importorskip("triton")

TOL = 1e-3
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, float | str]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.interpreted_checks"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CHECKS))
def test_interpreted_kernel(name: str, interpreted_results: dict[str, float | str]) -> None:
    result = interpreted_results[name]
    assert not isinstance(result, str), result
    assert result < TOL, f"{name}: relative error {result:.3e}"


def test_auto_backend_on_cpu_is_torch() -> None:
    from kernels.attention import available_backends, create_backend
    from kernels.kv_cache import KVCache

    cache = KVCache(1, 2, 4, 1, 8, torch.float32, "cpu")
    assert create_backend("auto", cache, 2, 0.5).name == "torch"
    assert {"torch", "triton", "flashinfer"} <= set(available_backends())


def test_ops_fall_back_to_torch_on_cpu() -> None:
    """Without the interpreter the public ops run their references on CPU tensors."""
    from kernels.ops import rmsnorm, rmsnorm_ref, silu_mul, silu_mul_ref

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter forced for the whole session")
    x, w = torch.randn(3, 8), torch.rand(8) + 0.5
    assert torch.equal(rmsnorm(x, w, 1e-6)[0], rmsnorm_ref(x, w, 1e-6)[0])
    assert torch.equal(silu_mul(x), silu_mul_ref(x))


def test_linear_falls_back_to_torch_on_cpu() -> None:
    """With the GEMV switched on, CPU linears (and the SiLU-fused down path) stay F.linear."""
    from kernels.ops import linear, set_gemv, silu_mul_ref

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter forced for the whole session")
    x, gate_up, w = torch.randn(1, 8), torch.randn(2, 16), torch.randn(5, 8)
    previous = set_gemv(True)
    try:
        assert torch.equal(linear(x, w), torch.nn.functional.linear(x, w))
        fused = linear(gate_up, w, silu_mul=True)
        assert torch.equal(fused, torch.nn.functional.linear(silu_mul_ref(gate_up), w))
    finally:
        set_gemv(previous)


def test_wide_one_row_layers_take_the_gemv_only_where_measured(monkeypatch) -> None:
    """gate_up-wide one-row layers go to the GEMV on the listed devices (or when the A/B
    override says so), never the vocabulary-wide LM head; elsewhere they stay on cuBLAS."""
    from kernels.ops import gemv

    monkeypatch.setattr(gemv, "ONE_ROW_MAX_OUT", None)
    cpu = torch.device("cpu")
    assert gemv.gemv_config(1, 6144, cpu) == (8, 512, 4)
    assert gemv.gemv_config(1, 24576, cpu) is None
    assert gemv.gemv_config(4, 4096, cpu) is None
    monkeypatch.setattr(gemv, "_wide_device", lambda index: True)
    cuda = torch.device("cuda", 0)
    assert gemv.gemv_config(1, 24576, cuda) == gemv.WIDE_CONFIG
    assert gemv.gemv_config(1, 151936, cuda) is None
    assert gemv.gemv_config(2, 24576, cuda) is None
    monkeypatch.setattr(gemv, "_wide_device", lambda index: False)
    assert gemv.gemv_config(1, 24576, cuda) is None
    monkeypatch.setattr(gemv, "ONE_ROW_MAX_OUT", 32768)
    assert gemv.gemv_config(1, 24576, cpu) == gemv.WIDE_CONFIG


def test_pdl_launches_only_on_cuda() -> None:
    """PDL is a launch attribute of SM90+ CUDA devices: with the switch on, CPU tensors (plain or
    interpreted) still launch without it, and the kernels' ``USE_PDL`` stays off."""
    from kernels._triton import pdl_args, set_pdl

    previous = set_pdl(True)
    try:
        assert pdl_args(torch.zeros(2)) == {"USE_PDL": False}
    finally:
        set_pdl(previous)
    assert pdl_args(torch.zeros(2)) == {"USE_PDL": False}


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_pack_aligned_views_start_on_16_bytes(dtype: torch.dtype) -> None:
    """Index tensors packed for one copy keep their values, and every view starts on a 16-byte
    boundary whatever the lengths before it (Triton would compile a variant per alignment)."""
    from kernels._triton import pack_aligned

    lists = [[1, 2, 3], [], [4], list(range(7)), [5, 6]]
    parts = pack_aligned(lists, dtype, "cpu")
    assert [p.tolist() for p in parts] == lists
    assert all(p.dtype == dtype and p.data_ptr() % 16 == 0 for p in parts)


def test_triton_plan_page_table_is_16_pages_wide() -> None:
    """The eager Triton backend's page table (a kernel argument's row stride) is padded to a
    multiple of 16 pages, so its divisibility never changes between batches."""
    from kernels.attention import AttentionBatch, KVCache
    from kernels.attention.triton_backend import TritonAttention

    cache = KVCache(1, 64, 4, 2, 16, torch.float32, "cpu")
    attn = TritonAttention(cache, 4, 0.25)
    for kv_lens in ([3], [70, 5], [9, 130, 1]):
        pages = [list(range(1, 1 + -(-n // 4))) for n in kv_lens]
        attn.plan(AttentionBatch([1] * len(kv_lens), kv_lens, pages,
                                 torch.zeros(len(kv_lens), dtype=torch.int64)))
        table = attn._page_table
        assert table.stride(0) % 16 == 0 and table.data_ptr() % 16 == 0
        for row, ids in zip(table.tolist(), pages):
            assert row[:len(ids)] == ids and not any(row[len(ids):])


def test_kernel_builds_are_counted_chaining_an_earlier_hook(monkeypatch) -> None:
    """Every Triton kernel variant built goes through the post-compile hook: it is counted,
    a hook installed before ours still runs, installing twice counts once, and the count
    reaches the ``agentspeed_kernel_builds`` gauge through the engine's stats."""
    triton = pytest.importorskip("triton")
    from types import SimpleNamespace

    from engine.ipc import EngineStats
    from kernels import _triton
    from runtime.metrics import Metrics

    runtime = triton.knobs.runtime
    seen = []
    monkeypatch.setattr(runtime, "jit_post_compile_hook", lambda **kw: seen.append(kw["repr"]))
    monkeypatch.setattr(_triton, "_BUILDS", [])
    assert _triton.track_kernel_builds() and _triton.track_kernel_builds()
    for name in ("a", "b"):  # the keywords Triton passes (runtime/jit.py, _call_hook)
        runtime.jit_post_compile_hook(key=(), repr=name, fn=SimpleNamespace(name=name),
                                      compile={}, is_manual_warmup=False,
                                      already_compiled=False)
    assert _triton.num_kernel_builds() == 2 and seen == ["a", "b"]
    assert _triton.built_kernels() == ["a", "b"]
    metrics = Metrics()
    metrics.observe_engine(EngineStats(
        num_running=0, num_waiting=0, num_free_pages=1, num_cached_pages=0, num_total_pages=1,
        num_computed_tokens=0, num_cached_tokens=0, num_preemptions=0,
        num_kernel_builds=_triton.num_kernel_builds()))
    assert metrics.registry.get_sample_value("agentspeed_kernel_builds") == 2


def test_eager_decode_kernel_variants_do_not_follow_the_split_count(monkeypatch) -> None:
    """The eager Triton backend splits longer contexts further; its launches must not turn the
    split count into a compile-time constant, or the first longer context mid-serve builds a new
    kernel variant (a stall of up to a second). Records every launch's constexprs instead of
    running the kernels."""
    from kernels.attention import triton_backend as tb
    from tests.kernels.attention_cases import make_case

    launches: list[tuple[str, tuple]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.name, tuple(sorted(
                (k, v) for k, v in kwargs.items()))))

    monkeypatch.setattr(tb.tk, "decode_kernel", Recorder("decode"))
    monkeypatch.setattr(tb.tk, "merge_kernel", Recorder("merge"))
    monkeypatch.setattr(tb, "kv_store_triton", lambda *args: None)
    split_counts = set()
    for kv_len in (40, 70, 100, 300):
        case = make_case([1], [kv_len], 16, 4, 2, 16, torch.float32, "cpu")
        backend = tb.TritonAttention(case.cache, case.num_q_heads, case.scale)
        backend.plan(case.batch)
        backend.forward(0, case.q, case.k, case.v)
        split_counts.add(backend._num_splits)
    assert len(split_counts) >= 2 and min(split_counts) > 1, split_counts
    for name in ("decode", "merge"):
        variants = {kwargs for kernel, kwargs in launches if kernel == name}
        assert len(variants) == 1, f"{name}: {len(variants)} variants for {split_counts} splits"
