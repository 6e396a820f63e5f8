"""The engine loop body: validate and queue requests, then schedule → run → update per step."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.ahead_pacer import AheadPacer
from engine.config import EngineConfig
from engine.errors import ContextLengthError, InvalidRequestError
from engine.model_runner import InFlight, ModelRunner
from engine.outputs import EngineOutput, TokenLogprob
from engine.request import FinishReason, Request
from engine.sampler import SampledToken
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput
from engine.session_pins import SessionHint
from engine.spec import DraftContext, SpecDecoder

logger = logging.getLogger(__name__)


class EngineCore:
    """Owns the scheduler and the runner of one engine (one rank's worth of state)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.vocab_size
        self.eos_token_ids = self.runner.eos_token_ids
        self.scheduler = Scheduler(
            config.scheduler_config(self.runner.num_pages, self.max_model_len,
                                    self.runner.host_tier_pages)
        )
        self._requests: dict[str, Request] = {}
        overlap = config.overlap_schedule
        self.overlap = self.runner.device.type == "cuda" if overlap is None else overlap
        self._in_flight: InFlight | None = None  # launched, tokens not yet collected
        # When to queue the next decode step; idle until given input to watch (watch_input).
        self.pacer = AheadPacer()
        self._collected_at = 0.0  # host clock when the device last finished a step we waited on
        self.spec: SpecDecoder | None = None
        if config.speculative_drafter != "none":
            context = DraftContext(self.runner.model, config.speculative_draft_layers)
            self.spec = SpecDecoder(config.speculative_drafter, config.num_speculative_tokens,
                                    context)

    # ---------------------------------------------------------------- requests
    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    session: SessionHint | None = None, cache_salt: str = "") -> None:
        """Validate and queue; raises ``InvalidRequestError`` and changes nothing on bad input."""
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running", "request_id")
        if not prompt_ids:
            raise InvalidRequestError("prompt must contain at least one token", "prompt")
        bad = next((t for t in prompt_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt holds token id {bad}, outside the vocabulary",
                                      "prompt")
        params.validate(self.vocab_size)
        limit = self.scheduler.max_request_len
        if len(prompt_ids) >= limit:
            raise ContextLengthError(
                f"this model's maximum context length is {limit} tokens, but the prompt has "
                f"{len(prompt_ids)} tokens (at least one must be left to generate)"
            )
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > limit:
            raise ContextLengthError(
                f"this model's maximum context length is {limit} tokens; the prompt has "
                f"{len(prompt_ids)} tokens and max_tokens asks for {params.max_tokens} more",
                param="max_tokens",
            )
        if params.grammar is not None:
            # Compile now so a broken schema is refused here, never in a step; the runner's
            # compile at the first sample is then a cache hit.
            self.runner.compile_grammar(params.grammar)
        request = Request(request_id, prompt_ids, params, self.eos_token_ids, self.max_model_len,
                          cache_salt=cache_salt, session=session)
        self._requests[request_id] = request
        self.scheduler.add(request)

    def abort(self, request_id: str) -> EngineOutput | None:
        request = self.scheduler.abort(request_id)
        self._requests.pop(request_id, None)
        if request is None:
            return None
        if self.spec is not None:
            self.spec.release(request)
        return self._output(request, [], None)

    def touch_session(self, session_id: str, lease_s: float | None = None,
                      retention: int | None = None) -> None:
        self.scheduler.touch_session(session_id, lease_s, retention)

    def close_session(self, session_id: str) -> None:
        self.scheduler.close_session(session_id)

    def watch_input(self, input_pending: Callable[[float], bool] | None) -> None:
        """Pace the step queued ahead (``engine.ahead_pacer``) against ``input_pending(timeout_s)``
        (whether engine input is waiting, after up to ``timeout_s``); None turns pacing off."""
        self.pacer.input_pending = input_pending
        self.runner.time_steps = input_pending is not None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -------------------------------------------------------------------- step
    def step(self) -> list[EngineOutput]:
        """Run one step and return its outputs.

        With overlap scheduling (``config.overlap_schedule``; on with CUDA) a step whose
        tokens the host need not see first (``ModelRunner.can_launch``) is launched, the next
        decode step is planned and queued behind it (``Scheduler.schedule_ahead``, its input
        tokens read on the device), and only then does the host wait for the first one's
        tokens, so the device never idles between decode steps. The queued step is the next
        call's. It is queued shortly before the running one is expected to end, and not at
        all when input arrives first, so that a new request waits for one step, not two
        (``engine.ahead_pacer``). Speculative decoding drafts from host tokens, so it never
        runs ahead.
        """
        prev, self._in_flight = self._in_flight, None
        if prev is None:
            if self.spec is not None:
                self.spec.propose(self.scheduler.running)
            sched_out = self.scheduler.schedule()
            self.runner.host_tier.execute(sched_out.session_ops)
            if sched_out.is_empty:
                return []
            if not (self.overlap and self.runner.can_launch(sched_out)):
                return self._finish(sched_out, self.runner.execute(sched_out))
            prev = self.runner.launch(sched_out)
        # Decode steps (one sampled token a row) predict the next one's length; by batch size.
        decode_rows = len(prev.out.requests) if _is_decode(prev.out) else None
        started_at = max(prev.launched_at, self._collected_at)
        # The pacer waits until the step ahead is due; True: input arrived, queue nothing.
        if self.spec is None and not self.pacer.hold(decode_rows, started_at):
            queued_at = time.perf_counter()
            ahead = self.scheduler.schedule_ahead(prev.out)
            if ahead is not None:
                self._in_flight = self.runner.launch(ahead, prev)
                self.pacer.observe_launch(time.perf_counter() - queued_at)
        sampled = self.runner.collect(prev)
        self._collected_at = time.perf_counter()
        if prev.started is not None and prev.done is not None and decode_rows is not None:
            seconds = prev.started.elapsed_time(prev.done) / 1000
            self.pacer.observe_step(decode_rows, seconds)
        return self._finish(prev.out, sampled)

    def _finish(self, sched_out: SchedulerOutput,
                sampled: dict[str, list[SampledToken]]) -> list[EngineOutput]:
        """Apply a finished step's tokens to the scheduler; the outputs of the requests."""
        num_drafts = {s.request.request_id: len(s.draft_ids) for s in sched_out.requests}
        token_ids = {rid: [t.token_id for t in tokens] for rid, tokens in sampled.items()}
        num_before = {s.request.request_id: len(s.request.output_ids) for s in sched_out.requests}
        outputs = []
        for request in self.scheduler.update(sched_out, token_ids):
            new_ids = request.output_ids[num_before[request.request_id] :]
            outputs.append(self._output(request, new_ids, sampled[request.request_id]))
            if self.spec is not None:
                self._observe_spec(request, num_drafts[request.request_id], len(new_ids))
            if request.is_finished:
                del self._requests[request.request_id]
        return outputs

    def _observe_spec(self, request: Request, num_drafts: int, num_emitted: int) -> None:
        if num_drafts:
            self.spec.observe(request, num_drafts, num_emitted)
        if request.is_finished:
            self.spec.release(request)

    def _output(self, request: Request, new_ids: list[int], sampled) -> EngineOutput:
        logprobs = None
        if request.params.logprobs is not None and sampled:
            logprobs = [
                TokenLogprob(t.token_id, t.logprob, list(t.top_logprobs or []))
                for t in sampled[: len(new_ids)]
            ]
        reason = request.finish_reason
        return EngineOutput(
            request_id=request.request_id,
            new_token_ids=new_ids,
            logprobs=logprobs,
            finish_reason=reason.value if isinstance(reason, FinishReason) else None,
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_tokens,
        )


def _is_decode(out: SchedulerOutput) -> bool:
    """One sampled token per request."""
    return bool(out.requests) and all(s.num_new_tokens == 1 and s.sample for s in out.requests)
