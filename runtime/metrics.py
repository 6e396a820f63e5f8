"""Prometheus metrics of one API process (its own registry, so several apps can coexist)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.ipc import EngineStats

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
        self.cache_hit_rate = Gauge("agentspeed_prefix_cache_hit_ratio",
                                    "Cached / scheduled prompt tokens since start", registry=r)
        self.sessions = Gauge("agentspeed_live_sessions", "Sessions with pinned or host KV",
                              registry=r)
        self.evicted = Gauge("agentspeed_evicted_pages", "KV pages evicted so far, by class",
                             ["eviction_class"], registry=r)
        self.demotions = Gauge("agentspeed_session_demotions",
                               "Session pins demoted to the host tier so far", registry=r)
        self.prefetches = Gauge("agentspeed_session_prefetches",
                                "Host-tier prefetches so far", registry=r)
        self.prefetch_seconds = Gauge("agentspeed_session_prefetch_seconds",
                                      "Time spent copying host-tier KV back", registry=r)
        self.spec_steps = Gauge("agentspeed_spec_verify_steps",
                                "Request-steps that verified speculative drafts", registry=r)
        self.spec_tokens = Gauge("agentspeed_spec_draft_tokens",
                                 "Speculative draft tokens verified, and accepted", ["outcome"],
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
        self.kv_pages.labels("pinned").set(stats.num_pinned_pages)
        self.kv_pages.labels("host_tier").set(stats.num_host_pages)
        total = stats.num_computed_tokens + stats.num_cached_tokens
        self.cache_hit_rate.set(stats.num_cached_tokens / total if total else 0.0)
        self.sessions.set(stats.num_sessions)
        self.evicted.labels("session").set(stats.num_evicted_session_pages)
        self.evicted.labels("plain").set(stats.num_evicted_pages - stats.num_evicted_session_pages)
        self.demotions.set(stats.num_demotions)
        self.prefetches.set(stats.num_prefetches)
        self.prefetch_seconds.set(stats.prefetch_seconds)
        self.spec_steps.set(stats.num_spec_verify_steps)
        self.spec_tokens.labels("drafted").set(stats.num_spec_draft_tokens)
        self.spec_tokens.labels("accepted").set(stats.num_spec_accepted_tokens)

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
