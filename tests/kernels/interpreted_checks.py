"""Triton kernels vs their torch references on tiny random CPU inputs, run by the interpreter.

``TRITON_INTERPRET=1`` must be set before Triton is first imported (its own library functions are
decorated at import), so ``test_triton_cpu.py`` runs this module in a subprocess::

    TRITON_INTERPRET=1 python -m tests.kernels.interpreted_checks

which prints one JSON object: check name -> relative error (float) or the error text (str).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable

import torch

from tests.kernels.attention_cases import make_case, rel_err, run_backend, run_graph_attention

CHECKS: dict[str, Callable[[], float]] = {}


def check(name: str):
    def register(fn: Callable[[], float]) -> Callable[[], float]:
        CHECKS[name] = fn
        return fn

    return register


def _rmsnorm(with_residual: bool) -> float:
    from kernels.ops.rmsnorm import rmsnorm_ref, rmsnorm_triton

    torch.manual_seed(0)
    x = torch.randn(5, 48)[:, :40]  # strided rows; hidden not a power of two
    w = torch.rand(40) + 0.5
    r = torch.randn(5, 40) if with_residual else None
    out, new_r = rmsnorm_triton(x, w, 1e-6, r)
    ref, ref_r = rmsnorm_ref(x, w, 1e-6, r)
    return max(rel_err(out, ref), rel_err(new_r, ref_r))


check("rmsnorm")(lambda: _rmsnorm(False))
check("rmsnorm_residual")(lambda: _rmsnorm(True))


def _rope(with_norm: bool) -> float:
    from kernels.ops.rope import rope_ref, rope_triton

    torch.manual_seed(1)
    num_tokens, hq, hk, d = 4, 3, 1, 16
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * d)  # q and k are strided views of it
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(num_tokens, hk, d)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.outer(torch.arange(64).float(), inv_freq)
    positions = torch.tensor([0, 7, 33, 63])
    qw = torch.rand(d) + 0.5 if with_norm else None
    kw = torch.rand(d) + 0.5 if with_norm else None
    q_ref, k_ref = rope_ref(positions, q.clone(), k.clone(), freqs.cos(), freqs.sin(), qw, kw)
    rope_triton(positions, q, k, freqs.cos(), freqs.sin(), qw, kw)
    return max(rel_err(q, q_ref), rel_err(k, k_ref))


check("rope")(lambda: _rope(False))
check("rope_qk_norm")(lambda: _rope(True))


@check("silu_mul")
def _silu_mul() -> float:
    from kernels.ops.silu_mul import silu_mul_ref, silu_mul_triton

    torch.manual_seed(2)
    x = torch.randn(3, 2, 2 * 24)
    return rel_err(silu_mul_triton(x, block=16), silu_mul_ref(x))


@check("kv_store")
def _kv_store() -> float:
    from kernels.ops.kv_store import kv_store_ref, kv_store_triton

    torch.manual_seed(3)
    k_cache, v_cache = torch.randn(2, 6, 4, 3, 8).unbind(0)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv = torch.randn(5, 2 * 3 * 8)
    k, v = (t.view(5, 3, 8) for t in kv.split(24, dim=-1))
    slots = torch.tensor([0, 5, 23, 9, 14])
    kv_store_triton(k_cache, v_cache, slots, k, v)
    kv_store_ref(k_ref, v_ref, slots, k, v)
    return max(rel_err(k_cache, k_ref), rel_err(v_cache, v_ref))


def _gemv(rows: int, n: int, k: int, with_bias: bool, config: tuple[int, int, int]) -> float:
    from kernels.ops.gemv import gemv_triton

    torch.manual_seed(4)
    x = torch.randn(rows, k + 8)[:, :k]  # strided rows
    w = torch.randn(n, k)
    b = torch.randn(n) if with_bias else None
    return rel_err(gemv_triton(x, w, b, config=config), torch.nn.functional.linear(x, w, b))


@check("gemv_silu_mul")
def _gemv_silu_mul() -> float:
    from kernels.ops.gemv import gemv_triton
    from kernels.ops.silu_mul import silu_mul_ref

    torch.manual_seed(5)
    gate_up = torch.randn(2, 2 * 72)
    w = torch.randn(37, 72)
    out = gemv_triton(gate_up, w, config=(8, 32, 1), silu_mul=True)
    return rel_err(out, torch.nn.functional.linear(silu_mul_ref(gate_up), w))


# N and K off the block sizes (masked loads), then the unmasked path.
check("gemv_1row")(lambda: _gemv(1, 37, 72, False, (8, 32, 1)))
check("gemv_3rows_bias")(lambda: _gemv(3, 37, 72, True, (4, 64, 1)))
check("gemv_even")(lambda: _gemv(4, 40, 128, False, (8, 64, 1)))
# Several K tiles, masked and unmasked.
check("gemv_4tiles")(lambda: _gemv(1, 16, 200, False, (8, 64, 1)))
check("gemv_3tiles_even")(lambda: _gemv(2, 16, 192, True, (8, 64, 1)))


ATTENTION_BATCHES = {  # name: (q_lens, kv_lens)
    "decode": ([1, 1, 1], [1, 9, 20]),
    "decode_split": ([1, 1], [70, 5]),  # longer than the interpreter's 32-token KV split
    "prefill": ([20, 3], [20, 3]),
    "extend": ([5, 18], [12, 40]),  # new tokens after a cached prefix
    "mixed": ([1, 6, 1, 17], [30, 6, 2, 21]),
}
ATTENTION_HEADS = [(4, 2, 16), (3, 1, 16), (2, 2, 12)]  # (q heads, kv heads, head_dim)


def _attention(q_lens: list[int], kv_lens: list[int], heads: tuple, page_size: int) -> float:
    case = make_case(q_lens, kv_lens, page_size, *heads, torch.float32, "cpu", seed=page_size)
    out, ref = run_backend("triton", case)
    return rel_err(out, ref)


for _name, (_q_lens, _kv_lens) in ATTENTION_BATCHES.items():
    for _heads in ATTENTION_HEADS:
        for _page_size in (1, 4):
            check(f"attention_{_name}_h{_heads[0]}x{_heads[1]}x{_heads[2]}_p{_page_size}")(
                lambda a=_q_lens, b=_kv_lens, h=_heads, p=_page_size: _attention(a, b, h, p)
            )


def _graph_attention(kv_lens: list[int], bucket: int, num_splits: int, page_size: int) -> float:
    case = make_case([1] * len(kv_lens), kv_lens, page_size, 4, 2, 16, torch.float32, "cpu",
                     seed=bucket + num_splits)
    out, ref = run_graph_attention("triton", case, bucket, num_splits)
    return rel_err(out, ref)


# Decode in CSR mode with per-row splits, as the decode graphs run it: contexts shorter than
# the splits (empty splits), padding rows, one split (no merge).
for _kv_lens, _bucket, _splits in (([1, 37, 5], 4, 3), ([64], 2, 1), ([9, 50], 2, 8)):
    for _page_size in (1, 4):
        check(f"graph_attention_{len(_kv_lens)}rows_b{_bucket}_s{_splits}_p{_page_size}")(
            lambda a=_kv_lens, b=_bucket, s=_splits, p=_page_size: _graph_attention(a, b, s, p)
        )


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    results: dict[str, float | str] = {}
    for name, fn in CHECKS.items():
        try:
            results[name] = fn()
        except Exception:  # reported per check by the test
            results[name] = traceback.format_exc(limit=4)
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
