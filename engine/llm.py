"""Offline API: ``LLM(model=...).generate(prompts, SamplingParams)`` and a streaming variant.

Runs the engine in-process (no server, no IPC); the server path uses the same ``EngineCore``
and ``OutputProcessor`` in separate processes. With ``tensor_parallel_size=N`` this process is
rank 0 and starts ranks 1..N-1 as worker processes (one tensor-parallel engine per process).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from engine.config import EngineConfig
from engine.engine_core import EngineCore
from engine.errors import InvalidRequestError
from engine.output_processor import OutputProcessor, RequestOutput
from engine.sampling_params import SamplingParams
from engine.session_pins import SessionHint
from engine.tokenizer import load_tokenizer

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str | None = None, **engine_args: Any) -> None:
        self.config = EngineConfig(model=model, **engine_args)
        self.engine = EngineCore(self.config)
        self.tokenizer = load_tokenizer(self.engine.runner.model_path)
        self.processor = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes (if any); the object is unusable after.
        Also done at interpreter exit; ``with LLM(...) as llm:`` does it on leaving."""
        self.engine.runner.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        """Token ids of ``messages`` rendered by the model's chat template, ready to generate."""
        ids = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, **kwargs
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _add(self, prompt: Prompt, params: SamplingParams,
             session: SessionHint | None = None) -> str:
        request_id = f"llm-{next(self._ids)}"
        prompt_ids = self.encode(prompt)
        self.engine.add_request(request_id, prompt_ids, params, session)
        self.processor.add(request_id, prompt_ids, params)
        return request_id

    def _step(self) -> list[RequestOutput]:
        outputs, to_abort = self.processor.process(self.engine.step())
        for request_id in to_abort:
            self.engine.abort(request_id)
        return outputs

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        sessions: Sequence[SessionHint | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (batched); results in prompt order.

        ``sessions``: per prompt, keep its KV pinned for that session when it finishes.
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError("one SamplingParams per prompt, or one for all", "params")
        request_ids = []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                request_ids.append(self._add(prompt, p, sessions[i] if sessions else None))
        except Exception:
            for request_id in request_ids:  # all or nothing: undo the ones already queued
                self.engine.abort(request_id)
                self.processor.discard(request_id)
            raise
        done: dict[str, RequestOutput] = {}
        while len(done) < len(request_ids):
            for out in self._step():
                if out.finished:
                    done[out.request_id] = out
        return [done[request_id] for request_id in request_ids]

    def stream(
        self, prompt: Prompt, params: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """Yield an output per step with ``delta_text``/``delta_token_ids``; the last is finished.

        Closing the iterator early aborts the request and frees its KV.
        """
        request_id = self._add(prompt, params or SamplingParams())
        finished = False
        try:
            while not finished:
                for out in self._step():
                    if out.request_id == request_id:
                        finished = out.finished
                        if out.delta_text or out.delta_token_ids or finished:
                            yield dataclasses.replace(out, token_ids=list(out.token_ids))
        finally:
            if not finished:
                self.engine.abort(request_id)
                self.processor.discard(request_id)
