"""Admission and error mapping shared by the protocol handlers."""

from __future__ import annotations

import logging

import msgspec

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams
from runtime.engine_client import EngineError
from runtime.protocol.errors import APIError, invalid, not_found, rate_limited, server_error
from runtime.state import ServerState
from sessions.manager import ResponseNotFoundError
from sessions.stores.base import StoreUnavailableError
from tools.constrained import (
    FunctionSchema,
    NamedToolChoice,
    response_format_grammar,
    tool_call_grammar,
)
from tools.parsers import CallsOnly, ToolCallParser, get_parser

logger = logging.getLogger(__name__)


def api_error_of(exc: BaseException) -> APIError:
    """The client-facing error for anything a generation can raise."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineError):
        if exc.server_error:
            return server_error("The engine failed while running this request.")
        return APIError(400, exc.message, "invalid_request_error", exc.param, exc.code)
    if isinstance(exc, ResponseNotFoundError):
        return invalid(str(exc), "previous_response_id", "previous_response_not_found")
    if isinstance(exc, StoreUnavailableError):
        return APIError(503, "The session store is unavailable; retry shortly.", "server_error",
                        None, "session_store_unavailable")
    logger.error("unexpected error in a generation", exc_info=exc)
    return server_error()


class generation_slot:  # noqa: N801 - used like a function: `async with generation_slot(...)`
    """Counts a request's generations against the server's limit; maps engine errors to
    ``APIError``. ``count`` is how many generations the request runs at once (its ``n``
    choices of each prompt)."""

    def __init__(self, state: ServerState, endpoint: str, count: int = 1) -> None:
        self.state, self.endpoint, self.count, self.entered = state, endpoint, count, False

    async def __aenter__(self) -> generation_slot:
        state = self.state
        if state.in_flight + self.count > state.config.max_concurrent_requests:
            state.metrics.requests.labels(self.endpoint, "rejected").inc()
            raise rate_limited("Too many concurrent requests; retry shortly.")
        if not state.engine.is_alive:
            raise server_error("The engine is not running.")
        state.in_flight += self.count
        self.entered = True
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if self.entered:
            self.state.in_flight -= self.count
            self.entered = False
        if exc is not None and not isinstance(exc, APIError) and isinstance(exc, Exception):
            self.state.metrics.requests.labels(self.endpoint, "error").inc()
            raise api_error_of(exc) from exc
        return False


def check_model(state: ServerState, model: str | None) -> None:
    """404 for a ``model`` this server does not serve (None and the aliases are served)."""
    if not state.accepts_model(model):
        raise not_found(f"The model '{model}' does not exist.", "model", "model_not_found")


def check_generation_count(state: ServerState, count: int, param: str) -> None:
    """Refuse (400, not 429: retrying cannot help) a request that alone runs more generations
    than the server ever runs at once."""
    limit = state.config.max_concurrent_requests
    if count > limit:
        raise invalid(f"This request runs {count} generations at once; this server runs at "
                      f"most {limit} (--max-concurrent-requests).", param, "unsupported_value")


def sampling_for_tools(state: ServerState, params: SamplingParams, tools: list[dict],
                       choice: str, response_format, strict_tools: bool = False,
                       parallel: bool = True) -> tuple[SamplingParams, ToolCallParser | None]:
    """Pick the tool-call parser and attach the grammar that constrained decoding enforces.

    ``tool_choice`` required / named always constrains the output to valid calls of the listed
    tools (so even a small model calls them correctly); ``auto`` constrains what is inside a
    ``<tool_call>`` block when a tool is ``strict``; ``response_format`` json_object /
    json_schema constrains a plain answer.
    """
    if choice not in ("auto", "none", "required") and not choice.startswith("function:"):
        raise invalid(f"unknown tool_choice {choice!r}", "tool_choice")
    if choice.startswith("function:"):
        name = choice.removeprefix("function:")
        if name not in {t["name"] for t in tools}:
            raise invalid(f"tool_choice names {name!r}, which is not among the tools",
                          "tool_choice")
    if choice == "required" and not tools:
        raise invalid("tool_choice 'required' needs at least one tool", "tool_choice")
    parser = get_parser("hermes")() if tools and choice != "none" else None
    forced = choice == "required" or choice.startswith("function:")
    if parser is not None and forced:
        parser = CallsOnly(parser)
    grammar = None
    try:
        if tools and (forced or (choice == "auto" and strict_tools)):
            functions = [FunctionSchema(t["name"], t.get("parameters")) for t in tools]
            tc = (NamedToolChoice(choice.removeprefix("function:"))
                  if choice.startswith("function:") else choice)
            grammar = tool_call_grammar(functions, tc, parallel)
        elif response_format is not None:
            grammar = response_format_grammar(response_format[0], response_format[1])
    except InvalidRequestError as exc:
        raise invalid(exc.message, exc.param) from None
    if grammar is not None:
        if params.ignore_eos:
            raise invalid("ignore_eos cannot be combined with constrained output",
                          "ignore_eos")
        params = msgspec.structs.replace(params, grammar=grammar)
    return params, parser
