"""Messages between the API process and the engine process (msgspec-msgpack over ZMQ).

API → engine: ``AddRequest``, ``AbortRequests``, ``Shutdown``.
Engine → API: ``EngineReady`` once, then ``StepOutputs`` per step and ``RequestFailed`` when a
request is refused; ``EngineDead`` if the loop cannot go on.
"""

from __future__ import annotations

import msgspec

from engine.outputs import EngineOutput
from engine.sampling_params import SamplingParams


class AddRequest(msgspec.Struct, tag="add"):
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


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


class EngineReady(msgspec.Struct, tag="ready"):
    model_path: str
    max_model_len: int  # the longest prompt + output one request may reach
    vocab_size: int
    eos_token_ids: list[int]
    page_size: int
    num_pages: int


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


ToEngine = AddRequest | AbortRequests | Shutdown
FromEngine = EngineReady | StepOutputs | RequestFailed | EngineDead
