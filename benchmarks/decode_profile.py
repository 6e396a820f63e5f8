"""Where a decode step's time goes: the PyTorch profiler over steady-state engine steps (GPU).

``profile_decode(llm, batch)`` starts ``batch`` requests, runs their prefill and ``warmup``
more steps, then records ``steps`` calls of ``engine.step()`` with the profiler (CUDA activity,
kernels inside graph replays included). From the device timeline it reports the GPU's busy
time per step (the union of kernel and copy intervals), the idle gap per step (span minus busy:
time the GPU waited for the host), and the kernels that take the time, grouped by name.

Used by ``b1_decode.py --profile``; prints a table and returns a JSON-ready dict.
"""

from __future__ import annotations

import random

import torch


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _short(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def profile_decode(llm, batch: int, steps: int = 24, warmup: int = 8, top: int = 12) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from engine.sampling_params import SamplingParams

    engine = llm.engine
    rng = random.Random(batch)
    params = SamplingParams(temperature=0.0, max_tokens=steps + warmup + 16, ignore_eos=True)
    ids = [f"prof-{batch}-{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, [rng.randrange(engine.vocab_size) for _ in range(512)], params)
    started: set[str] = set()
    while len(started) < batch:  # prefill (chunked: many steps at large batches)
        started.update(o.request_id for o in engine.step() if o.new_token_ids)
    for _ in range(warmup):
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    while engine.has_unfinished():
        engine.step()
    device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    intervals = [(e.time_range.start, e.time_range.end) for e in device_events]
    if not intervals:
        print("profiler saw no device activity", flush=True)
        return dict(batch=batch, steps=steps, error="no device events")
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    busy = _busy_us(intervals)
    by_name: dict[str, list[float]] = {}
    for e in device_events:
        by_name.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
    kernels = sorted(((sum(d), len(d), n) for n, d in by_name.items()), reverse=True)
    result = dict(
        batch=batch, steps=steps, span_ms_per_step=span / steps / 1e3,
        busy_ms_per_step=busy / steps / 1e3, idle_ms_per_step=(span - busy) / steps / 1e3,
        kernels_per_step=len(device_events) / steps,
        top=[dict(name=n, ms_per_step=t / steps / 1e3, calls_per_step=c / steps,
                  share=t / busy) for t, c, n in kernels[:top]],
    )
    print(f"profile batch {batch}: {result['span_ms_per_step']:.3f} ms/step on the device "
          f"timeline, busy {result['busy_ms_per_step']:.3f}, idle "
          f"{result['idle_ms_per_step']:.3f}, {result['kernels_per_step']:.0f} device ops/step")
    print(f"  {'ms/step':>8} {'calls':>6} {'share':>6}  kernel")
    for row in result["top"]:
        print(f"  {row['ms_per_step']:>8.3f} {row['calls_per_step']:>6.1f} "
              f"{100 * row['share']:>5.1f}%  {_short(row['name'])}")
    return result
