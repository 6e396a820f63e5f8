"""JSON encoding of wire structs and decoding of request bodies into them.

One module-level encoder; one cached typed decoder per request type. Every decode failure leaves
as an ``APIError`` 400 naming the offending parameter, never as a msgspec exception.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

import msgspec

from runtime.protocol.errors import from_msgspec_error

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_untyped_decoder = msgspec.json.Decoder()


def encode_json(obj: Any) -> bytes:
    """Encode a struct (or builtins) to compact JSON bytes; ``UNSET`` fields are left out."""
    return _encoder.encode(obj)


@cache
def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(type_)


def decode_request(body: bytes | str, type_: type[T]) -> T:
    """Decode and validate a request body; raise ``APIError`` 400 on malformed JSON or bad fields.

    A type may define a static ``prepare_wire(obj) -> obj`` that rewrites the untyped JSON value
    before validation (the Responses API lets input messages omit their ``type`` tag, which a
    msgspec tagged union cannot express); such types take a decode-then-convert path.
    """
    prepare = getattr(type_, "prepare_wire", None)
    try:
        if prepare is None:
            return _decoder(type_).decode(body)
        return msgspec.convert(prepare(_untyped_decoder.decode(body)), type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_msgspec_error(exc) from None
