"""Prometheus metrics of one API process (its own registry, so several apps can coexist).

Engine-side values come from the ``EngineStats`` of the engine's latest step, read at each
scrape; cumulative engine counts are exposed as gauges that only grow (their names predate this
rule), and the prefetch latency as a histogram built from the engine's own cumulative buckets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.ipc import PREFETCH_SECONDS_BUCKETS, EngineStats

if TYPE_CHECKING:
    from runtime.generation import Finished
    from sessions.manager import SessionManager

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("agentspeed_requests", "Requests by endpoint and outcome",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("agentspeed_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter("agentspeed_cached_prompt_tokens",
                                     "Prompt tokens served from the prefix cache", registry=r)
        self.generated_tokens = Counter("agentspeed_generated_tokens", "Generated tokens",
                                        registry=r)
        self.ttft = Histogram("agentspeed_time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("agentspeed_inter_token_latency_seconds",
                             "Mean time between tokens of a request", buckets=_LATENCY_BUCKETS,
                             registry=r)
        self.running = Gauge("agentspeed_running_requests", "Requests running", registry=r)
        self.waiting = Gauge("agentspeed_waiting_requests", "Requests waiting", registry=r)
        self.kv_pages = Gauge("agentspeed_kv_pages", "KV cache pages by state", ["state"],
                              registry=r)
        self.kv_usage = Gauge("agentspeed_kv_cache_usage_ratio",
                              "Fraction of KV pages in use by requests", registry=r)
        self.preemptions = Gauge("agentspeed_preemptions", "Preemptions so far", registry=r)
        self.prefill_first = Gauge("agentspeed_prefill_first_steps",
                                   "Steps that ran short prompts while the decode rows sat "
                                   "out (--prefill-first-tokens), so far", registry=r)
        self.prefill_first_capped = Gauge(
            "agentspeed_prefill_first_capped_steps", "Steps that ran short prompts mixed with "
            "the decode rows, their share of sit-outs spent (--prefill-first-max-share), so far",
            registry=r)
        self.ahead_held = Gauge("agentspeed_ahead_held_steps",
                                "Decode steps not queued ahead because a request arrived "
                                "first (ahead pacing), so far", registry=r)
        self.cache_hit_rate = Gauge("agentspeed_prefix_cache_hit_ratio",
                                    "Cached / scheduled prompt tokens since start", registry=r)
        self.sessions = Gauge("agentspeed_live_sessions",
                              "Live sessions: lease running, not deleted (pinned or demoted)",
                              registry=r)
        self.host_sessions = Gauge("agentspeed_host_tier_sessions",
                                   "Sessions with a KV copy in the host tier", registry=r)
        self.evicted = Gauge("agentspeed_evicted_pages",
                             "KV pages evicted so far, by eviction class (plain: no session "
                             "used them; expired: past their lease or deleted; idle: demoted "
                             "over the pin budget; pinned: demoted only to make room)",
                             ["eviction_class"], registry=r)
        self.demotions = Gauge("agentspeed_session_demotions",
                               "Session pins demoted (unlocked, backed up to the host tier) "
                               "so far", registry=r)
        self.expired_leases = Gauge("agentspeed_session_expired_leases",
                                    "Session leases that ran out so far", registry=r)
        self.prefetches = Gauge("agentspeed_session_prefetches",
                                "Host-tier prefetches so far", registry=r)
        self.prefetched_pages = Gauge("agentspeed_session_prefetched_pages",
                                      "KV pages copied back from the host tier so far",
                                      registry=r)
        self._prefetch_latency = _PrefetchLatency()
        r.register(self._prefetch_latency)
        self.spec_steps = Gauge("agentspeed_spec_verify_steps",
                                "Request-steps that verified speculative drafts", registry=r)
        self.spec_tokens = Gauge("agentspeed_spec_draft_tokens",
                                 "Speculative draft tokens verified, and accepted", ["outcome"],
                                 registry=r)
        self.kernel_builds = Gauge("agentspeed_kernel_builds",
                                   "Triton kernel variants the engine process built so far, "
                                   "start-up included (one built while serving stalls a step)",
                                   registry=r)
        self.connections = Gauge("agentspeed_websocket_connections", "Open WebSockets",
                                 registry=r)
        self.saves_pending = Gauge("agentspeed_session_saves_pending",
                                   "Finished turns waiting for the session store", registry=r)
        self.saves_deferred = Gauge("agentspeed_session_saves_deferred",
                                    "Finished turns whose save had to wait for the session "
                                    "store, since start", registry=r)

    def watch_sessions(self, sessions: SessionManager) -> None:
        """Read the session manager's retry buffer at every scrape."""
        self.saves_pending.set_function(lambda: len(sessions.pending))
        self.saves_deferred.set_function(lambda: sessions.num_deferred)

    def observe_engine(self, stats: EngineStats | None) -> None:
        if stats is None:
            return
        in_use = stats.num_total_pages - stats.num_free_pages - stats.num_cached_pages
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_pages.labels("free").set(stats.num_free_pages)
        self.kv_pages.labels("cached").set(stats.num_cached_pages)
        self.kv_pages.labels("in_use").set(in_use)
        self.kv_usage.set(in_use / max(1, stats.num_total_pages))
        self.preemptions.set(stats.num_preemptions)
        self.prefill_first.set(stats.num_prefill_first_steps)
        self.prefill_first_capped.set(stats.num_prefill_first_capped)
        self.ahead_held.set(stats.num_ahead_held_steps)
        self.kv_pages.labels("pinned").set(stats.num_pinned_pages)
        self.kv_pages.labels("host_tier").set(stats.num_host_pages)
        total = stats.num_computed_tokens + stats.num_cached_tokens
        self.cache_hit_rate.set(stats.num_cached_tokens / total if total else 0.0)
        self.sessions.set(stats.num_sessions)
        self.host_sessions.set(stats.num_host_sessions)
        for eviction_class, num_pages in stats.num_evicted_pages_by_class.items():
            self.evicted.labels(eviction_class).set(num_pages)
        self.demotions.set(stats.num_demotions)
        self.expired_leases.set(stats.num_expired_leases)
        self.prefetches.set(stats.num_prefetches)
        self.prefetched_pages.set(stats.num_prefetched_pages)
        self._prefetch_latency.stats = stats
        self.spec_steps.set(stats.num_spec_verify_steps)
        self.spec_tokens.labels("drafted").set(stats.num_spec_draft_tokens)
        self.spec_tokens.labels("accepted").set(stats.num_spec_accepted_tokens)
        self.kernel_builds.set(stats.num_kernel_builds)

    def observe_finished(self, final: Finished, start_s: float, end_s: float) -> None:
        """One finished generation; ``start_s`` / ``end_s`` (``time.monotonic()``) are when it
        began and ended, ``final.first_token_time`` when its first token came."""
        self.prompt_tokens.inc(final.prompt_tokens)
        self.cached_tokens.inc(final.cached_tokens)
        self.generated_tokens.inc(final.completion_tokens)
        first = final.first_token_time
        if first is not None:
            self.ttft.observe(first - start_s)
            if final.completion_tokens > 1:  # the time after the first token, per later token
                self.itl.observe((end_s - first) / (final.completion_tokens - 1))

    def render(self, stats: EngineStats | None) -> bytes:
        self.observe_engine(stats)
        return generate_latest(self.registry)


class _PrefetchLatency(Collector):
    """``agentspeed_session_prefetch_seconds``: a histogram of host-tier prefetch latencies,
    exposed as the engine counted it (``EngineStats.prefetch_seconds_buckets``: cumulative
    counts per ``PREFETCH_SECONDS_BUCKETS`` bound, then +Inf; ``prefetch_seconds`` the sum)."""

    name = "agentspeed_session_prefetch_seconds"
    doc = "Time to copy a session's KV back from the host tier, per prefetch"

    def __init__(self) -> None:
        self.stats: EngineStats | None = None

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.doc)]

    def collect(self) -> Iterator[Metric]:
        bounds = [*map(floatToGoString, PREFETCH_SECONDS_BUCKETS), "+Inf"]
        stats = self.stats
        counts = stats.prefetch_seconds_buckets if stats is not None else []
        if len(counts) != len(bounds):  # no step yet (or an engine without the histogram)
            counts, total = [0] * len(bounds), 0.0
        else:
            total = stats.prefetch_seconds
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], list(zip(bounds, counts)), sum_value=total)
        yield family
