"""agentspeed's extensions to OpenAI request bodies (clients send them through ``extra_body``).

``speculative`` (Chat Completions, Responses over HTTP and WebSocket ``response.create``)::

    "speculative": {"enabled": true | false | null, "num_draft_tokens": 0..16 | null}

- ``enabled``: ``null`` (or the object left out) follows the server: speculate when it runs a
  drafter (``--speculative-drafter``), pausing for requests whose drafts keep being rejected;
  ``true`` speculates every step, without that back-off; ``false`` never speculates.
- ``num_draft_tokens``: the most drafted tokens verified per step, capped by the server's
  ``--num-speculative-tokens``; ``0`` turns speculation off; ``null``: the server's setting.

Speculation never changes what a request outputs (greedy outputs are token-identical, sampled
outputs keep their distribution); it only changes how many tokens each step adds. Without a
drafter on the server both fields have no effect. Constrained output (strict tools, a named or
required ``tool_choice``, ``response_format``) speculates too, each draft checked by the grammar.
"""

from __future__ import annotations

from msgspec import Struct


class SpeculativeOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """``speculative``: per-request speculative decoding (see the module doc)."""

    enabled: bool | None = None
    num_draft_tokens: int | None = None

    def sampling_fields(self) -> dict[str, object]:
        """The ``SamplingParams`` fields these options set (validated there)."""
        return {"speculative": self.enabled, "num_speculative_tokens": self.num_draft_tokens}


# SamplingParams field -> the wire name blamed when that field is out of range.
WIRE_NAMES = {"num_speculative_tokens": "speculative.num_draft_tokens",
              "speculative": "speculative.enabled"}
