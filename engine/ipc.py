"""Messages between the API process and the engine process (msgspec-msgpack over ZMQ).

API → engine: ``AddRequest``, ``AbortRequests``, ``Shutdown``.
Engine → API: ``EngineReady`` once, then ``StepOutputs`` per step and ``RequestFailed`` when a
request is refused; ``EngineDead`` if the loop cannot go on.
"""

from __future__ import annotations

import msgspec

from engine.outputs import EngineOutput
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint

# Upper bounds (seconds) of the prefetch-latency histogram buckets in ``EngineStats``.
PREFETCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

class AddRequest(msgspec.Struct, tag="add"):
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    session: SessionHint | None = None  # pin the path for this session when it finishes
    cache_salt: str = ""  # radix namespace (per-tenant isolation)


class TouchSession(msgspec.Struct, tag="touch"):
    session_id: str
    lease_s: float | None = None
    retention: int | None = None


class CloseSession(msgspec.Struct, tag="close"):
    session_id: str


class AbortRequests(msgspec.Struct, tag="abort"):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


class EngineStats(msgspec.Struct):
    num_running: int
    num_waiting: int
    num_free_pages: int
    num_cached_pages: int
    num_total_pages: int
    num_computed_tokens: int  # cumulative, prefill + decode
    num_cached_tokens: int  # cumulative, from the prefix cache
    num_preemptions: int
    num_evicted_pages: int = 0
    num_evicted_session_pages: int = 0  # of which a session had used (all classes but plain)
    # Evicted pages by eviction class, cumulative: "plain" (no session ever used them),
    # "expired" (sessions past their lease or deleted), "idle" (demoted over the pin budget),
    # "pinned" (pins demoted only because nothing else could make room).
    num_evicted_pages_by_class: dict[str, int] = msgspec.field(default_factory=dict)
    num_sessions: int = 0  # live sessions: lease running, not deleted (pinned or demoted)
    num_host_sessions: int = 0  # sessions with a copy in the host tier (live or expired)
    num_pinned_pages: int = 0
    num_host_pages: int = 0
    num_demotions: int = 0
    num_expired_leases: int = 0  # cumulative
    num_prefetches: int = 0  # cumulative
    num_prefetched_pages: int = 0  # cumulative
    prefetch_seconds: float = 0.0  # cumulative: the histogram's sum
    # (len(PREFETCH_SECONDS_BUCKETS) + 1,) cumulative counts of prefetches that took <= each
    # bound, then of all of them (+Inf): a Prometheus histogram as is.
    prefetch_seconds_buckets: list[int] = msgspec.field(default_factory=list)
    # Speculative decoding (engine.spec.SpecStats), cumulative; all 0 without a drafter.
    num_spec_verify_steps: int = 0  # request-steps that verified at least one draft
    num_spec_draft_tokens: int = 0  # drafts verified
    num_spec_accepted_tokens: int = 0  # drafts accepted
    # Triton kernel variants the engine process built so far (start-up included); one built
    # while serving stalled a step for up to about a second.
    num_kernel_builds: int = 0
    # Steps that ran short prompts without the decode rows (prefill_first_tokens), those that
    # ran them mixed because the decode rows' share of sit-outs was spent, and decode steps
    # not queued ahead because a request arrived while the one before ran (ahead pacing).
    num_prefill_first_steps: int = 0
    num_prefill_first_capped: int = 0
    num_ahead_held_steps: int = 0


class EngineReady(msgspec.Struct, tag="ready"):
    model_path: str
    max_model_len: int  # the longest prompt + output one request may reach
    vocab_size: int
    eos_token_ids: list[int]
    page_size: int
    num_pages: int
    prefix_caching: bool = True  # finished requests leave their KV for later prompts to reuse


class StepOutputs(msgspec.Struct, tag="outputs"):
    outputs: list[EngineOutput]
    stats: EngineStats


class RequestFailed(msgspec.Struct, tag="failed"):
    request_id: str
    message: str
    param: str | None = None
    code: str | None = None
    server_error: bool = False  # True: the engine failed, not the request


class EngineDead(msgspec.Struct, tag="dead"):
    message: str


ToEngine = AddRequest | AbortRequests | TouchSession | CloseSession | Shutdown
FromEngine = EngineReady | StepOutputs | RequestFailed | EngineDead
