"""Texts of an exact token count for the agentic benchmark (B2), under a byte-level BPE tokenizer.

A text is a run of words, each `` word`` a single token of the tokenizer's vocabulary. The
pre-tokenizers of GPT-2-style BPEs (Qwen, SmolLM2, Llama 3) split before every space-led word,
so no merge crosses two words and the text of ``n`` words is exactly ``n`` tokens, whatever
template text surrounds it (the template's newlines and special tokens are split off too).
Every text is drawn from its own seed: unique contexts and tool outputs never share a prefix
(16 tokens, one KV page, match by chance with probability ~ vocabulary^-16).
"""

from __future__ import annotations

import random
from typing import Any

_MAX_WORDS = 4096


class ExactTexts:
    """Seeded texts of exactly ``num_tokens`` tokens of ``tokenizer`` (an HF tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        words = []
        for piece in sorted(tokenizer.get_vocab()):
            # GPT-2's byte-level BPEs spell a leading space as "Ġ".
            word = piece[1:]
            if piece.startswith("\u0120") and 3 <= len(word) <= 9 and word.isascii() \
                    and word.isalpha() and word.islower():
                words.append(word)
        random.Random(0).shuffle(words)
        self.words = [w for w in words[: 4 * _MAX_WORDS] if self._one_token(" " + w)]
        self.words = self.words[:_MAX_WORDS]
        if len(self.words) < 256:
            raise ValueError(f"only {len(self.words)} single-token words in this vocabulary; "
                             "exact-length texts need a byte-level BPE tokenizer")

    def _one_token(self, text: str) -> bool:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) == 1

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def text(self, num_tokens: int, seed: str) -> str:
        """``num_tokens`` space-led words drawn from ``seed``; checked by encoding it."""
        rng = random.Random(seed)
        text = "".join(" " + w for w in rng.choices(self.words, k=num_tokens))
        got = self.count(text)
        assert got == num_tokens, f"text of {num_tokens} words encodes to {got} tokens"
        return text
