"""Streaming tool-call parsers, picked by name with ``get_parser``."""

from tools.parsers.base import (
    CallsOnly,
    ParsedOutput,
    ParsedToolCall,
    ParserEvent,
    TextDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
    available_parsers,
    fold_events,
    get_parser,
    new_call_id,
    register_parser,
)
from tools.parsers.hermes import HermesToolParser

__all__ = [
    "CallsOnly",
    "HermesToolParser",
    "ParsedOutput",
    "ParsedToolCall",
    "ParserEvent",
    "TextDelta",
    "ToolCallArgsDelta",
    "ToolCallEnd",
    "ToolCallParser",
    "ToolCallStart",
    "available_parsers",
    "fold_events",
    "get_parser",
    "new_call_id",
    "register_parser",
]
