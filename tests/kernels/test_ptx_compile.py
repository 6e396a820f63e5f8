"""Kernels whose inline PTX the interpreter cannot run still compile for an H100 (sm_90), on the
CPU: Triton's CUDA backend and its bundled ``ptxas`` need no GPU. The decode kernel with the L2
prefetch of the next weight (``engine.graph_attention.PREFETCH_O_BYTES``) must assemble, issue
one prefetch per line it was given and keep its PDL wait first; without it, no prefetch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run in a child: kernel modules must be imported with TRITON_INTERPRET unset to compile.
_COMPILE = r"""
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.attention import triton_kernels as tk

lines = int(sys.argv[1])
fn = tk.decode_kernel
params = list(inspect.signature(fn.fn).parameters)
consts = dict(PAGE_SIZE=16, SPLIT=True, BLOCK_H=16, BLOCK_N=64, BLOCK_D=128, CSR=True,
              DYN_SPLIT=True, USE_PDL=True, PREFETCH_LINES=lines, PREFETCH_LINE=64)
bf16 = ("Q", "K_CACHE", "V_CACHE", "OUT", "PREFETCH")
i32 = ("SEQ_IDS", "CU_Q_LENS", "KV_LENS", "PAGE_TABLE", "KV_INDPTR", "KV_LAST")
signature = {p: "constexpr" if p in consts else "*bf16" if p in bf16 else "*i32" if p in i32
             else "*fp32" if p in ("MID_O", "MID_LSE") else "fp32" if p == "sm_scale_log2"
             else "i32" for p in params}
if not lines:
    signature["PREFETCH"] = "constexpr"
    consts["PREFETCH"] = None
src = ASTSource(fn=fn, signature=signature,
                constexprs={(params.index(k),): v for k, v in consts.items()})
kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=4, num_stages=2))
ptx = kernel.asm["ptx"]
print(json.dumps(dict(prefetch=ptx.count("prefetch.global.L2"),
                      wait=ptx.find("griddepcontrol.wait"),
                      first_prefetch=ptx.find("prefetch.global.L2"),
                      cubin=len(kernel.asm["cubin"]))))
"""


def _ptxas_available() -> bool:
    """Triton's CUDA backend with its bundled ``ptxas`` (or one on the PATH)."""
    try:
        import triton
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError:
        return False
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return os.path.exists(bundled) or shutil.which("ptxas") is not None


@pytest.mark.skipif(not _ptxas_available(), reason="Triton's CUDA backend with ptxas is needed")
@pytest.mark.parametrize("lines", [0, 256, 512])
def test_decode_kernel_with_l2_prefetch_assembles_for_sm90(lines: int) -> None:
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _COMPILE, str(lines)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["cubin"] > 0
    # 4 warps: 128 threads share the lines, each issuing its own prefetch instructions.
    assert got["prefetch"] == lines // 128
    assert got["wait"] >= 0
    if lines:
        assert got["first_prefetch"] > got["wait"], "prefetch before the PDL wait"
