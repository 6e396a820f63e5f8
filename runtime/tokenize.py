"""``POST /tokenize`` and ``POST /detokenize``: the served model's tokens, for clients that
budget their context (an agent deciding when to compact its history).

``messages`` are rendered by the same renderer as ``/v1/chat/completions``, generation prompt
included, so ``count`` is exactly the prompt a chat completion with them would prefill.
"""

from __future__ import annotations

from fastapi.responses import Response

from runtime import convert
from runtime.guard import check_model
from runtime.protocol import server as t
from runtime.protocol.codec import decode_request, encode_json
from runtime.protocol.errors import invalid
from runtime.state import ServerState


def tokenize(state: ServerState, body: bytes) -> Response:
    request = decode_request(body, t.TokenizeRequest)
    check_model(state, request.model)
    if request.prompt is not None:
        tokens = list(state.tokenizer.encode(request.prompt,
                                             add_special_tokens=request.add_special_tokens))
    else:
        tokens = convert.render_chat(state, convert.chat_messages(request),
                                     convert.chat_tools(request))
    strs = state.tokenizer.convert_ids_to_tokens(tokens) if request.return_token_strs else None
    return Response(encode_json(t.TokenizeResponse(
        count=len(tokens), max_model_len=state.ready.max_model_len, tokens=tokens,
        token_strs=strs)), media_type="application/json")


def detokenize(state: ServerState, body: bytes) -> Response:
    request = decode_request(body, t.DetokenizeRequest)
    check_model(state, request.model)
    vocab = state.ready.vocab_size
    for i, token in enumerate(request.tokens):
        if not 0 <= token < vocab:
            raise invalid(f"tokens[{i}] is {token}, which is not a token ID of this model "
                          f"(0..{vocab - 1}).", f"tokens[{i}]")
    return Response(encode_json(t.DetokenizeResponse(prompt=state.tokenizer.decode(
        request.tokens))), media_type="application/json")
