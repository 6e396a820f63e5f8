"""When overlap scheduling queues the next decode step behind the running one.

Queued at once, the next step keeps the device busy, but a request that arrives while the
running step runs (an agent's tool result, a new turn) then waits behind two steps: the rest
of the running one and all of the queued one, which is about a decode step too many of
time to first token (B2 at 4 sessions: ~1.2x a lone prefill, with decode steps of ~14 ms).

The pacer holds the next step back until shortly before the running one is expected to end,
watching the engine's input meanwhile. If input arrives first, the engine queues nothing
ahead: the running step finishes, the new request is admitted and its prefill runs in the
very next step. Otherwise the step is queued ``margin`` before the expected end, soon enough
that the device does not idle. The expected length is the device time of recent decode
steps of the same batch size (CUDA events); without an estimate, or without an input to
watch (the offline ``LLM``), the step is queued at once, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_EMA = 0.25  # weight of the newest observation
_MIN_MARGIN_S = 0.0005
_LAUNCH_MARGIN = 3.0  # margin: at least this many times the host time of queuing a step


class AheadPacer:
    def __init__(self, input_pending: Callable[[float], bool] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """``input_pending(timeout_s)``: wait up to ``timeout_s`` for engine input; whether
        some is waiting (it is left for the caller's loop to handle)."""
        self.input_pending = input_pending
        self.clock = clock
        self._step_s: dict[int, float] = {}  # device seconds of a decode step, by batch size
        self._launch_s = 0.0  # host seconds from deciding to queue a step to its launch
        self.held = 0  # steps not queued ahead because input arrived (for tests and stats)

    def observe_step(self, rows: int, device_s: float) -> None:
        """A decode step of ``rows`` rows took ``device_s`` on the device."""
        old = self._step_s.get(rows)
        self._step_s[rows] = device_s if old is None else old + _EMA * (device_s - old)

    def observe_launch(self, host_s: float) -> None:
        self._launch_s += _EMA * (host_s - self._launch_s)

    def expected_step_s(self, rows: int) -> float | None:
        return self._step_s.get(rows)

    @property
    def margin_s(self) -> float:
        return max(_MIN_MARGIN_S, _LAUNCH_MARGIN * self._launch_s)

    def hold(self, rows: int | None, started_at: float) -> bool:
        """Wait until the next step should be queued behind a running decode step of ``rows``
        rows (None: another kind of step, not waited on) that began on the device at about
        ``started_at`` (host clock). True when input arrived first: queue nothing ahead."""
        if self.input_pending is None:
            return False
        if self.input_pending(0.0):
            self.held += 1
            return True
        step_s = None if rows is None else self._step_s.get(rows)
        if step_s is None:
            return False
        deadline = started_at + step_s - self.margin_s
        while (left := deadline - self.clock()) > 0:
            if self.input_pending(left):
                self.held += 1
                return True
        return False
