"""Incremental detokenization with stop strings (no torch; runs wherever text is needed).

Decoding only a short window of recent tokens keeps each step O(1): the text of
``ids[prefix:read]`` is subtracted from the text of ``ids[prefix:]``. A window that ends inside a
multi-byte character decodes to U+FFFD and is held back until the character completes, so a
delta never splits a character. Stop strings are searched only in the text that could contain a
new match, and while streaming the last ``len(longest stop) - 1`` characters are held back so a
stop string is never half-sent.
"""

from __future__ import annotations

from typing import Any

from engine.sampling_params import SamplingParams

_PROMPT_CONTEXT = 6  # prompt tokens decoded with the output so merges at the seam are right


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.skip_special = params.skip_special_tokens
        self.stop = list(params.stop)
        self.include_stop = params.include_stop_str_in_output
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        context = prompt_ids[-_PROMPT_CONTEXT:]
        self._ids = list(context)
        self._prefix = 0
        self._read = len(context)
        self.text = ""  # all output text so far (stop string removed once found)
        self._sent = 0  # characters of ``text`` already handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add_tokens(self, token_ids: list[int]) -> int:
        """Append tokens; sets ``stopped`` if a stop string appeared (and truncates there).

        Returns how many of ``token_ids`` count as output: all, or those up to the one that
        completed a stop string. Several tokens arrive at once when speculative drafts were
        accepted; the ones after the stop are dropped, as one-at-a-time decoding never made them.
        """
        for num_taken, token_id in enumerate(token_ids):
            if self.stopped:
                return num_taken
            self._ids.append(token_id)
            prefix_text = self._decode(self._ids[self._prefix : self._read])
            new_text = self._decode(self._ids[self._prefix :])
            if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
                continue  # incomplete character (or nothing visible yet): wait for more bytes
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            self._append(delta)
        return len(token_ids)

    def flush(self) -> None:
        """At the end, emit whatever is still pending (even an incomplete character)."""
        if self.stopped or self._read == len(self._ids):
            return
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        self._append(new_text[len(prefix_text) :])

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - self.hold)
        self.text += delta
        if not self.stop:
            return
        found = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if found:
            index, stop = min(found)
            self.text = self.text[: index + len(stop) if self.include_stop else index]
            self.stopped = True

    def take_delta(self, final: bool) -> str:
        """Text not handed out yet; while streaming, hold back a possible stop-string prefix."""
        end = len(self.text)
        if not (final or self.stopped or not self.stop):
            end -= self.hold
        if end <= self._sent:
            return ""
        delta = self.text[self._sent : end]
        self._sent = end
        return delta
