"""B2's numbers: per-turn rows and target checks from timed sessions, and their printing.

Rows are per turn index over the sessions of one level: token counts are means of the server's
``usage``, times are medians (TTFT also its max). See ``b2_agentic.py`` for the definitions.
"""

from __future__ import annotations

import statistics

from agentic_session import SessionResult

TARGETS = dict(hit_vs_ideal=0.99, ttft_vs_ref=1.2, pct_roofline=85.0)


def model_bytes(config: dict, dtype_bytes: int) -> tuple[int, int]:
    """(weight bytes read per decode step without the embedding table, KV bytes per token)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    per_layer = 2 * hidden * q + 2 * hidden * kv + 3 * hidden * config["intermediate_size"] \
        + 2 * hidden + (2 * head_dim if config["model_type"] == "qwen3" else 0)
    weights = layers * per_layer + hidden + config["vocab_size"] * hidden  # + norm, LM head
    return weights * dtype_bytes, 2 * layers * kv * dtype_bytes


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(concurrency: int, results: list[SessionResult], wall_s: float, cut: str | None,
              gen_tokens: int, bw: float | None, weight_bytes: int, kv_bytes: int,
              refs: dict[int, dict]) -> dict:
    """One level's per-turn rows, totals and target checks (refs: turn -> probe summary)."""
    rows = []
    num_turns = max((len(r.turns) for r in results), default=0)
    for k in range(num_turns):
        done = [r for r in results if len(r.turns) > k]
        ts = [r.turns[k] for r in done]
        prompt = sum(t.prompt_tokens for t in ts)
        cached = sum(t.cached_tokens for t in ts)
        new = None
        if k > 0:
            new = sum(t.prompt_tokens - r.turns[k - 1].prompt_tokens
                      - r.turns[k - 1].output_tokens for t, r in zip(ts, done))
        ttfts = [t.ttft_s for t in ts if t.ttft_s is not None]
        tpots = [t.decode_s / (t.output_tokens - 1) for t in ts
                 if t.decode_s is not None and t.output_tokens > 1]
        tpot = _median(tpots)
        context = prompt / len(ts) + gen_tokens / 2  # mean decode context of the turn
        # Every session of this turn decoding in one batch: the weights are read once a step.
        roof = bw / (weight_bytes + len(ts) * context * kv_bytes) if bw else None
        ref = refs.get(k + 1)
        ref = ref if ref and ref["valid"] else None
        row = dict(
            turn=k + 1, sessions=len(ts), prompt_tokens=round(prompt / len(ts)),
            cached_tokens=round(cached / len(ts)),
            new_tokens=None if new is None else round(new / len(ts)),
            output_tokens=round(sum(t.output_tokens for t in ts) / len(ts)),
            hit=cached / prompt, ideal_hit=None if new is None else 1 - new / prompt,
            ttft_ms=None if not ttfts else 1e3 * statistics.median(ttfts),
            ttft_max_ms=None if not ttfts else 1e3 * max(ttfts),
            tpot_ms=None if tpot is None else 1e3 * tpot,
            user_tok_s=None if not tpot else 1 / tpot, roofline_tok_s=roof,
            ref_prefill_ms=None if ref is None else ref["ttft_ms"])
        row["hit_vs_ideal"] = None if not row["ideal_hit"] else row["hit"] / row["ideal_hit"]
        row["ttft_vs_ref"] = None if not (ref and row["ttft_ms"]) else \
            row["ttft_ms"] / ref["ttft_ms"]
        row["pct_roofline"] = None if not (roof and row["user_tok_s"]) else \
            100 * row["user_tok_s"] / roof
        rows.append(row)
    later = rows[1:]
    checks = {}
    for key, target, worst in (("hit_vs_ideal", TARGETS["hit_vs_ideal"], min),
                               ("ttft_vs_ref", TARGETS["ttft_vs_ref"], max),
                               ("pct_roofline", TARGETS["pct_roofline"], min)):
        values = [r[key] for r in (rows if key == "pct_roofline" else later)
                  if r[key] is not None]
        value = worst(values) if values else None
        ok = None if value is None else (value >= target if worst is min else value <= target)
        checks[key] = dict(worst=value, target=target, ok=ok)
    errors = sorted({r.error for r in results if r.error})
    stopped = sorted({r.stopped for r in results if r.stopped})
    out_tokens = sum(t.output_tokens for r in results for t in r.turns)
    computed = sum(t.prompt_tokens - t.cached_tokens for r in results for t in r.turns)
    status = "failed" if errors else ("partial" if (stopped or cut) else "ok")
    return dict(concurrency=concurrency, status=status, errors=errors,
                stopped=stopped + ([cut] if cut else []), wall_s=wall_s,
                turns_done=sum(len(r.turns) for r in results), output_tokens=out_tokens,
                output_tok_s=out_tokens / wall_s if wall_s else None,
                computed_prompt_tokens=computed,
                total_tok_s=(out_tokens + computed) / wall_s if wall_s else None,
                rows=rows, targets=checks)


def probe_summary(results: list[SessionResult], max_new_tokens: int) -> dict[int, dict]:
    """Reference prefill per turn from the probes of a C=1 level (turn -> summary).

    A probe that computed more than ``max_new_tokens`` missed the cache: its time is not "prefill
    the new tokens on that context", so it is kept but not used as a reference (``valid``).
    """
    refs: dict[int, dict] = {}
    for r in results:
        for p in r.probes:
            ttft = p.ttft_s if p.ttft_s is not None else p.total_s
            computed = p.prompt_tokens - p.cached_tokens
            refs[p.turn] = dict(ttft_ms=1e3 * ttft, prompt_tokens=p.prompt_tokens,
                                cached_tokens=p.cached_tokens, computed_tokens=computed,
                                valid=computed <= max_new_tokens)
    return refs


# --------------------------------------------------------------------------------- output
def fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def print_level(level: dict) -> None:
    print(f"\nC={level['concurrency']}: {level['status']}, {level['turns_done']} turns in "
          f"{level['wall_s']:.1f} s; output {level['output_tokens']} tok "
          f"({fmt(level['output_tok_s'], '.1f', 0)} tok/s), prompt computed "
          f"{level['computed_prompt_tokens']} tok; server: {level.get('server', {})}")
    for msg in level["errors"] + level["stopped"]:
        print(f"  ! {msg}")
    print(f"{'turn':>4} {'prompt':>7} {'cached':>7} {'new':>5} {'hit%':>6} {'ideal%':>6} "
          f"{'/ideal':>6} {'TTFT ms':>8} {'max':>8} {'ref ms':>7} {'/ref':>5} {'TPOT ms':>7} "
          f"{'tok/s/u':>7} {'roof':>6} {'%roof':>5}")
    for r in level["rows"]:
        ideal = None if r["ideal_hit"] is None else 100 * r["ideal_hit"]
        print(f"{r['turn']:>4} {r['prompt_tokens']:>7} {r['cached_tokens']:>7} "
              f"{fmt(r['new_tokens'], 'd', 5)} {100 * r['hit']:>6.2f} {fmt(ideal, '.2f', 6)} "
              f"{fmt(r['hit_vs_ideal'], '.3f', 6)} {fmt(r['ttft_ms'], '.1f', 8)} "
              f"{fmt(r['ttft_max_ms'], '.1f', 8)} {fmt(r['ref_prefill_ms'], '.1f', 7)} "
              f"{fmt(r['ttft_vs_ref'], '.2f', 5)} {fmt(r['tpot_ms'], '.2f', 7)} "
              f"{fmt(r['user_tok_s'], '.1f', 7)} {fmt(r['roofline_tok_s'], '.1f', 6)} "
              f"{fmt(r['pct_roofline'], '.1f', 5)}")
    for key, check in level["targets"].items():
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[check["ok"]]
        print(f"  target {key}: worst {fmt(check['worst'], '.3f', 0)} vs {check['target']} "
              f"-> {verdict}")


def skip(report: dict, concurrency: int, why: str) -> None:
    report["levels"].append(dict(concurrency=concurrency, status="skipped", errors=[why]))
    print(f"\nC={concurrency}: skipped ({why})", flush=True)


def server_deltas(before: dict[str, float], after: dict[str, float]) -> dict:
    keys = {"preemptions": "agentspeed_preemptions",
            "demotions": "agentspeed_session_demotions",
            "prefetches": "agentspeed_session_prefetches",
            "kernel_builds": "agentspeed_kernel_builds",
            "prefill_first_steps": "agentspeed_prefill_first_steps",
            "prefill_first_capped": "agentspeed_prefill_first_capped_steps",
            "ahead_held_steps": "agentspeed_ahead_held_steps"}
    out = {k: after.get(m, 0) - before.get(m, 0) for k, m in keys.items() if m in after}
    evicted = [v - before.get(k, 0) for k, v in after.items()
               if k.startswith("agentspeed_evicted_pages")]
    if evicted:
        out["evicted_pages"] = sum(evicted)
    return {k: int(v) for k, v in out.items()}


def kv_capacity_pages(metrics: dict[str, float]) -> int | None:
    states = ("free", "cached", "in_use")
    values = [metrics.get(f'agentspeed_kv_pages{{state="{s}"}}') for s in states]
    return None if None in values else int(sum(values))
