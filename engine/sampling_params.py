"""Per-request sampling settings, validated once at admission."""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from engine.errors import InvalidRequestError

_MAX_LOGPROBS = 20
_MIN_SEED = -(2**63)
_MAX_SEED = 2**64 - 1

GrammarKind = Literal["json_schema", "json_object", "structural_tag"]
_GRAMMAR_KINDS = ("json_schema", "json_object", "structural_tag")


class GrammarSpec(msgspec.Struct, frozen=True):
    """A grammar the output must match, as text (``engine.structured`` compiles it).

    ``json_schema``: ``source`` is a JSON schema, matched strictly (no extra properties unless
    the schema allows them). ``json_object``: any JSON object; ``source`` is ignored (leave it
    empty). ``structural_tag``: ``source`` is an xgrammar structural tag as JSON text (what
    ``xgrammar.StructuralTag.model_dump_json()`` writes), e.g. tool calls in a model's format.
    Frozen and hashable, so compiled grammars can be cached by spec.
    """

    kind: GrammarKind
    source: str = ""


class SamplingParams(msgspec.Struct, kw_only=True):
    """How one request picks its tokens and when it stops.

    ``temperature == 0`` means greedy. ``top_k == 0`` and ``top_p == 1`` and ``min_p == 0`` disable
    those filters. ``logprobs`` is the number of top alternatives to report per token (``0`` reports
    only the sampled token's log-probability; ``None`` reports nothing).
    """

    max_tokens: int | None = None  # None: until EOS or the context window is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0  # HF-style, over prompt and output tokens
    frequency_penalty: float = 0.0  # OpenAI-style, over output tokens
    presence_penalty: float = 0.0  # OpenAI-style, over output tokens
    # OpenAI-style: token id -> bias in [-100, 100] added to its logit before sampling (after
    # the penalties); -100 all but bans a token, +100 all but forces it.
    logit_bias: dict[int, float] | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    grammar: GrammarSpec | None = None  # constrain the output; None: free
    # Speculative decoding: None follows the engine (on when it has a drafter, with back-off);
    # True speculates without the acceptance back-off; False never. Grammars speculate too.
    speculative: bool | None = None
    num_speculative_tokens: int | None = None  # drafts per step; None: the engine's setting

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ``InvalidRequestError`` naming the first bad field; never mutates anything."""

        def bad(param: str, why: str) -> InvalidRequestError:
            return InvalidRequestError(f"{param} {why}", param=param)

        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0 or self.temperature != self.temperature:
            raise bad("temperature", f"must be between 0 and 2, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise bad("top_k", f"must be 0 (disabled) or positive, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}")
        # Written as "not in range" so NaN, which fails every comparison, is refused too.
        if not 0.0 < self.repetition_penalty < math.inf:
            raise bad("repetition_penalty", f"must be positive, got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise bad(name, f"must be between -2 and 2, got {value}")
        for token_id, bias in (self.logit_bias or {}).items():
            if token_id < 0 or (vocab_size is not None and token_id >= vocab_size):
                raise bad("logit_bias", f"holds token {token_id}, outside the vocabulary")
            if not -100.0 <= bias <= 100.0:
                raise bad("logit_bias", f"values must be between -100 and 100, got {bias} "
                          f"for token {token_id}")
        if self.seed is not None and not _MIN_SEED <= self.seed <= _MAX_SEED:
            # torch.Generator.manual_seed refuses anything outside this range.
            raise bad("seed", f"must fit in 64 bits, got {self.seed}")
        if any(not s for s in self.stop):
            raise bad("stop", "must not contain empty strings")
        if len(self.stop) > 16:
            raise bad("stop", f"allows at most 16 sequences, got {len(self.stop)}")
        if self.logprobs is not None and not 0 <= self.logprobs <= _MAX_LOGPROBS:
            raise bad("logprobs", f"must be between 0 and {_MAX_LOGPROBS}, got {self.logprobs}")
        for token_id in self.stop_token_ids:
            if token_id < 0 or (vocab_size is not None and token_id >= vocab_size):
                raise bad("stop_token_ids", f"holds {token_id}, outside the vocabulary")
        if self.num_speculative_tokens is not None and not 0 <= self.num_speculative_tokens <= 16:
            raise bad("num_speculative_tokens",
                      f"must be between 0 and 16, got {self.num_speculative_tokens}")
        if self.grammar is not None:
            # Compiling (engine.structured) checks the source; only the cheap checks are here.
            if self.grammar.kind not in _GRAMMAR_KINDS:
                raise bad("grammar", f"kind must be one of {_GRAMMAR_KINDS}, got "
                          f"{self.grammar.kind!r}")
            if self.grammar.kind != "json_object" and not self.grammar.source:
                raise bad("grammar", f"of kind {self.grammar.kind!r} needs a source")
            if self.ignore_eos:
                # A grammar ends the output with an end-of-sequence token; ignoring it would
                # ask for tokens after the grammar is done.
                raise bad("ignore_eos", "cannot be combined with a grammar (structured output)")
