"""Generation events → Responses streaming events, with sequence numbers and the lane id.

Shared by SSE and WebSocket mode. Items open as text or a tool call starts and close when the
next one starts or the response ends, so every ``output_item.added`` has its ``done`` and the
final ``Response.output`` holds the same items the events described.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from msgspec import UNSET

from runtime.generation import Finished, LogprobsDelta
from runtime.logprobs import ContentLogprobs, event_logprobs, response_logprobs
from runtime.protocol import response_events as ev
from runtime.protocol import responses as r
from tools.parsers.base import ParserEvent, TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart


class ResponseStream:
    def __init__(self, response: r.Response, stream_id: str | None,
                 tokenizer: Any = None) -> None:
        """``tokenizer``: report token logprobs (``LogprobsDelta`` events) with it; None:
        the request did not ask for them."""
        self.response = response
        self.stream_id = UNSET if stream_id is None else stream_id
        self.seq = 0
        self.tokenizer = tokenizer
        self._text: r.OutputMessage | None = None  # the open message item
        self._text_parts: list[str] = []
        self._text_logprobs: list[r.Logprob] = []
        self._logprobs = ContentLogprobs(keep_tool_calls=False)
        self._calls: dict[int, tuple[int, r.FunctionCall]] = {}  # call index -> (output idx, item)

    def _ev(self, cls, **fields):
        event = cls(sequence_number=self.seq, stream_id=self.stream_id, **fields)
        self.seq += 1
        return event

    def start(self) -> list[ev.StreamEvent]:
        return [self._ev(ev.ResponseCreated, response=self.response),
                self._ev(ev.ResponseInProgress, response=self.response)]

    def on(self, event: ParserEvent | LogprobsDelta) -> list[ev.StreamEvent]:
        out: list[ev.StreamEvent] = []
        taken = self._logprobs.on(0, event)
        if isinstance(event, TextDelta):
            if self._text is None:
                out += self._open_text()
            self._text_parts.append(event.text)
            logprobs = self._convert(taken)
            out.append(self._ev(ev.OutputTextDelta, item_id=self._text.id,
                                output_index=self._text_index, content_index=0,
                                delta=event.text, logprobs=event_logprobs(logprobs)))
        elif isinstance(event, ToolCallStart):
            out += self._close_text()
            item = r.FunctionCall(call_id=event.call_id, name=event.name, arguments="",
                                  id="fc_" + secrets.token_hex(16), status="in_progress")
            index = len(self.response.output)
            self.response.output.append(item)
            self._calls[event.index] = (index, item)
            out.append(self._ev(ev.OutputItemAdded, output_index=index, item=item))
        elif isinstance(event, ToolCallArgsDelta):
            index, item = self._calls[event.index]
            out.append(self._ev(ev.FunctionCallArgumentsDelta, item_id=item.id,
                                output_index=index, delta=event.delta))
        elif isinstance(event, ToolCallEnd):
            index, item = self._calls[event.index]
            done = r.FunctionCall(call_id=item.call_id, name=item.name,
                                  arguments=event.arguments, id=item.id, status="completed")
            self.response.output[index] = done
            out.append(self._ev(ev.FunctionCallArgumentsDone, item_id=item.id,
                                output_index=index, arguments=event.arguments))
            out.append(self._ev(ev.OutputItemDone, output_index=index, item=done))
        return out

    def _convert(self, taken) -> list[r.Logprob]:
        """Logprobs a text chunk took, in the output's shape, added to the open text part's."""
        if self.tokenizer is None or not taken:
            return []
        logprobs = response_logprobs(self.tokenizer, taken)
        self._text_logprobs += logprobs
        return logprobs

    def _open_text(self) -> list[ev.StreamEvent]:
        self._text = r.OutputMessage(id="msg_" + secrets.token_hex(16), status="in_progress")
        self._text_index = len(self.response.output)
        self._text_parts, self._text_logprobs = [], []
        self.response.output.append(self._text)
        return [self._ev(ev.OutputItemAdded, output_index=self._text_index, item=self._text),
                self._ev(ev.ContentPartAdded, item_id=self._text.id,
                         output_index=self._text_index, content_index=0,
                         part=r.OutputText(text=""))]

    def _close_text(self, status: str = "completed") -> list[ev.StreamEvent]:
        if self._text is None:
            return []
        text = "".join(self._text_parts)
        part = r.OutputText(text=text, logprobs=self._text_logprobs)
        item = r.OutputMessage(id=self._text.id, status=status, content=[part])
        self.response.output[self._text_index] = item
        index, item_id = self._text_index, self._text.id
        self._text = None
        return [self._ev(ev.OutputTextDone, item_id=item_id, output_index=index,
                         content_index=0, text=text,
                         logprobs=event_logprobs(self._text_logprobs)),
                self._ev(ev.ContentPartDone, item_id=item_id, output_index=index,
                         content_index=0, part=part),
                self._ev(ev.OutputItemDone, output_index=index, item=item)]

    def finish(self, final: Finished) -> list[ev.StreamEvent]:
        if self._text is not None:  # the end-of-turn token's logprob: it has no text
            self._convert(self._logprobs.on(0, final))
        incomplete = final.finish_reason == "length"
        out = self._close_text("incomplete" if incomplete else "completed")
        resp = self.response
        resp.usage = r.ResponseUsage.of(final.prompt_tokens, final.completion_tokens,
                                        final.cached_tokens)
        resp.completed_at = int(time.time())
        if incomplete:
            resp.status = "incomplete"
            resp.incomplete_details = r.IncompleteDetails(reason="max_output_tokens")
            out.append(self._ev(ev.ResponseIncomplete, response=resp))
        else:
            resp.status = "completed"
            out.append(self._ev(ev.ResponseCompleted, response=resp))
        return out

    def fail(self, message: str) -> list[ev.StreamEvent]:
        out = self._close_text("incomplete")
        self.response.status = "failed"
        self.response.error = r.ResponseError(code="server_error", message=message)
        out.append(self._ev(ev.ResponseFailed, response=self.response))
        return out
