"""``/metrics`` values through a demote-and-prefetch cycle, on a server whose flags force it.

``--pin-budget-fraction 0``: every finished turn's pin is over budget, so the next engine step
demotes it (backs its full pages up to the host tier, unlocks them). ``--host-tier-gb`` is sized
to hold exactly ``HOST_PAGES`` pages, so a longer session is demoted without a host copy. A
filler request then needs most of a small pool, evicting the demoted session's pages, and that
session's next turn prefetches them back. Every step is checked against the engine's numbers as
/metrics shows them (and so are the flags: with the defaults nothing here would be demoted).
"""

from __future__ import annotations

import json
import os

import openai
import pytest

from engine.config import EngineConfig
from tests.runtime.server import ServerProcess

PAGE = EngineConfig.page_size
NUM_PAGES = 64  # 1008 tokens (page 0 is scratch): a ~900-token filler must evict
HOST_PAGES = 20  # what --host-tier-gb buys (float32 KV)
MODEL = "SmolLM2-135M-Instruct"


def host_tier_gb(model_path: str, num_pages: int) -> str:
    """The --host-tier-gb that holds exactly ``num_pages`` float32 pages of the model's KV."""
    with open(os.path.join(model_path, "config.json")) as f:
        cfg = json.load(f)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    page_bytes = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 4 * PAGE
    return repr((num_pages + 0.5) * page_bytes / (1 << 30))


@pytest.fixture(scope="module")
def server(default_model_path):
    proc = ServerProcess(
        "--num-pages", str(NUM_PAGES), "--max-model-len", str(NUM_PAGES * PAGE),
        "--dtype", "float32", "--pin-budget-fraction", "0",
        "--host-tier-gb", host_tier_gb(default_model_path, HOST_PAGES),
        "--session-store", "memory://").wait_ready()
    yield proc
    proc.stop()


def scrape(server: ServerProcess) -> dict[str, float]:
    import httpx

    samples = {}
    for line in httpx.get(server.base_url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("agentspeed_"):
            name, value = line.rsplit(" ", 1)
            samples[name.replace("agentspeed_", "", 1)] = float(value)
    return samples


def rows(tag: str, n: int) -> str:
    return "\n".join(f"{tag}{i:03d} file_{i}.py {i * 37 % 1000} bytes" for i in range(n))


def test_demote_evict_prefetch_cycle(server):
    client = openai.OpenAI(api_key="none", base_url=server.base_url + "/v1", max_retries=0,
                           timeout=300)
    prompt_tokens = cached_tokens = output_tokens = 0

    def count(usage, prompt_name: str, output_name: str) -> None:
        nonlocal prompt_tokens, cached_tokens, output_tokens
        prompt_tokens += getattr(usage, prompt_name)
        details = usage.input_tokens_details if prompt_name == "input_tokens" else \
            usage.prompt_tokens_details
        cached_tokens += details.cached_tokens
        output_tokens += getattr(usage, output_name)

    def respond(**kwargs):
        r = client.responses.create(model=MODEL, temperature=0, max_output_tokens=4, **kwargs)
        count(r.usage, "input_tokens", "output_tokens")
        return r

    def fill(n_rows: int):
        c = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=2,
            messages=[{"role": "user", "content": rows("f", n_rows)}])
        count(c.usage, "prompt_tokens", "completion_tokens")
        return c

    assert 'kv_pages{state="free"}' not in scrape(server)  # the engine has not stepped yet

    # 1. A session's first turn ends pinned (the pin outlives the request).
    r1 = respond(instructions="Summarise in one line.", input=rows("a", 10))
    m1 = scrape(server)
    total_pages = m1['kv_pages{state="free"}'] + m1['kv_pages{state="cached"}']
    pinned_1 = m1['kv_pages{state="pinned"}']
    assert pinned_1 == (r1.usage.input_tokens + r1.usage.output_tokens - 1) // PAGE > 0
    assert m1["live_sessions"] == 1 and m1["session_demotions"] == 0

    # 2. The next step demotes it (budget 0) and backs it up; a filler then evicts its pages.
    filler = fill(55)
    assert filler.usage.prompt_tokens > m1['kv_pages{state="free"}'] * PAGE  # must evict
    m2 = scrape(server)
    assert m2["session_demotions"] == 1
    assert m2['kv_pages{state="pinned"}'] == 0
    assert m2['kv_pages{state="host_tier"}'] == pinned_1 and m2["host_tier_sessions"] == 1
    evicted_idle = m2['evicted_pages{eviction_class="idle"}']
    assert evicted_idle >= 1
    for other in ("plain", "expired", "pinned"):
        assert m2[f'evicted_pages{{eviction_class="{other}"}}'] == 0, other
    assert m2["live_sessions"] == 1  # demoted, not dead: its lease runs

    # 3. Its next turn prefetches what was evicted and reuses the whole backed-up path.
    r2 = respond(previous_response_id=r1.id, input="And in one word?")
    assert r2.usage.input_tokens_details.cached_tokens == pinned_1 * PAGE
    m3 = scrape(server)
    assert m3["session_prefetches"] == 1
    assert 1 <= m3["session_prefetched_pages"] <= min(evicted_idle, pinned_1)
    assert m3["session_prefetch_seconds_count"] == 1
    assert m3['session_prefetch_seconds_bucket{le="+Inf"}'] == 1
    assert 0 < m3["session_prefetch_seconds_sum"] < 60
    buckets = [v for k, v in m3.items() if k.startswith("session_prefetch_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[0] >= 0  # cumulative
    assert m3['kv_pages{state="host_tier"}'] == 0 and m3["host_tier_sessions"] == 0  # used up
    pinned_2 = m3['kv_pages{state="pinned"}']
    assert pinned_2 == (r2.usage.input_tokens + r2.usage.output_tokens - 1) // PAGE

    # 4. A session longer than the host tier is demoted without a copy (S1, demoted again by
    # the same rule, fits): --host-tier-gb took effect; with its default both would be kept.
    big = respond(instructions="Summarise in one line.", input=rows("b", 30))
    assert (big.usage.input_tokens + big.usage.output_tokens - 1) // PAGE > HOST_PAGES
    fill(2)
    m4 = scrape(server)
    assert m4["session_demotions"] == 3
    assert m4["host_tier_sessions"] == 1 and m4['kv_pages{state="host_tier"}'] == pinned_2
    assert m4['kv_pages{state="pinned"}'] == 0
    assert m4["live_sessions"] == 2 and m4["session_expired_leases"] == 0
    assert m4["session_prefetches"] == 1

    # Pages are conserved; nothing runs; the hit rate is the engine's cached / scheduled tokens.
    assert m4['kv_pages{state="in_use"}'] == 0 and m4["kv_cache_usage_ratio"] == 0
    assert m4['kv_pages{state="free"}'] + m4['kv_pages{state="cached"}'] == total_pages
    assert m4["cached_prompt_tokens_total"] == cached_tokens > 0
    assert m4["prompt_tokens_total"] == prompt_tokens
    # computed tokens = prompt - cached (prefill) + at most one per output token (decode)
    ratio = m4["prefix_cache_hit_ratio"]
    assert cached_tokens / (prompt_tokens + output_tokens) <= ratio <= cached_tokens / prompt_tokens
