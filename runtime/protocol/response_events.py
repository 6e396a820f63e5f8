"""Responses API streaming events, sent as SSE (``event: <type>``) or as WebSocket messages.

A text turn streams: created, in_progress, output_item.added (message), content_part.added,
output_text.delta..., output_text.done, content_part.done, output_item.done, then completed
(or incomplete / failed). A function call streams output_item.added (function_call),
function_call_arguments.delta..., function_call_arguments.done, output_item.done.

``sequence_number`` counts the events of one response from 0. ``stream_id`` is the WebSocket
lane; it is left out unless the ``response.create`` that started the response named a lane.
"""

from __future__ import annotations

from msgspec import UNSET, Struct, UnsetType, field

from runtime.protocol.responses import OutputItem, OutputText, Refusal, Response


class TopTokenLogprob(Struct, kw_only=True):
    token: str
    logprob: float


class TokenLogprob(Struct, kw_only=True):
    """A token's logprob in a text delta/done event (no ``bytes``, unlike ``OutputText``'s)."""

    token: str
    logprob: float
    top_logprobs: list[TopTokenLogprob] = field(default_factory=list)  # most likely first


class StreamEvent(Struct, tag_field="type", kw_only=True):
    """Base of every event; subclasses set ``tag`` to their ``type``."""

    sequence_number: int
    stream_id: str | UnsetType = UNSET


class ResponseCreated(StreamEvent, tag="response.created"):
    response: Response


class ResponseInProgress(StreamEvent, tag="response.in_progress"):
    response: Response


class ResponseCompleted(StreamEvent, tag="response.completed"):
    response: Response


class ResponseIncomplete(StreamEvent, tag="response.incomplete"):
    response: Response


class ResponseFailed(StreamEvent, tag="response.failed"):
    response: Response


class OutputItemAdded(StreamEvent, tag="response.output_item.added"):
    output_index: int
    item: OutputItem  # status "in_progress", no content / arguments yet


class OutputItemDone(StreamEvent, tag="response.output_item.done"):
    output_index: int
    item: OutputItem  # final form, as it appears in Response.output


class ContentPartAdded(StreamEvent, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | Refusal  # empty text


class ContentPartDone(StreamEvent, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | Refusal  # full text


class OutputTextDelta(StreamEvent, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token in ``delta``


class OutputTextDone(StreamEvent, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


class FunctionCallArgumentsDelta(StreamEvent, tag="response.function_call_arguments.delta"):
    item_id: str  # the function_call item's "fc_..." id
    output_index: int
    delta: str


class FunctionCallArgumentsDone(StreamEvent, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(StreamEvent, tag="error"):
    """An error in an SSE stream (flat, like OpenAI's ``ResponseErrorEvent``).

    Over WebSocket use ``websocket.WsErrorEvent``, which nests the error object.
    """

    message: str
    code: str | None = None
    param: str | None = None


ResponseStreamEvent = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | ErrorEvent
)
