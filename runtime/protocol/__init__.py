"""Wire types of the server: OpenAI-shaped requests, responses, stream events and errors as
msgspec Structs, plus the JSON codec that turns bad bodies into 400s naming the bad parameter.

Modules: ``errors`` (APIError), ``codec`` (encode_json, decode_request), ``chat`` (Chat
Completions), ``responses`` (Responses request, items, Response), ``response_events`` (Responses
streaming events), ``websocket`` (WebSocket-mode client envelope and error event), ``server``
(model list, health).
"""
