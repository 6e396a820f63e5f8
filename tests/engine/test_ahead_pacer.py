"""The overlap scheduler's pacing of the step it queues ahead (engine.ahead_pacer), on a fake
clock whose input watch "sleeps" by advancing it."""

from __future__ import annotations

import pytest

from engine.ahead_pacer import AheadPacer


class FakeInput:
    """An input watch on a fake clock: input shows up at ``arrives_at`` (None: never)."""

    def __init__(self, arrives_at: float | None = None) -> None:
        self.now = 100.0
        self.arrives_at = arrives_at
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def pending(self, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        if self.arrives_at is not None and self.arrives_at <= self.now + timeout_s:
            self.now = max(self.now, self.arrives_at)
            return True
        self.now += timeout_s
        return False


def test_without_an_input_to_watch_the_step_is_queued_at_once():
    pacer = AheadPacer()
    pacer.observe_step(4, 0.014)
    assert pacer.hold(4, started_at=0.0) is False


def test_input_already_waiting_holds_the_step_back():
    watch = FakeInput(arrives_at=0.0)
    pacer = AheadPacer(watch.pending, watch.clock)
    assert pacer.hold(4, started_at=watch.now) is True
    assert pacer.held == 1 and watch.waits == [0.0]


def test_without_an_estimate_the_step_is_queued_at_once():
    watch = FakeInput()
    pacer = AheadPacer(watch.pending, watch.clock)
    assert pacer.hold(4, started_at=watch.now) is False
    assert watch.now == 100.0  # no waiting: nothing is known about the step's length


def test_waits_until_margin_before_the_expected_end():
    watch = FakeInput()
    pacer = AheadPacer(watch.pending, watch.clock)
    pacer.observe_step(4, 0.014)
    pacer.observe_launch(0.001)  # margin: 3 x 0.25 ms (the launch EMA) = 0.75 ms
    started = watch.now - 0.002  # the running step began 2 ms ago
    assert pacer.hold(4, started_at=started) is False
    assert watch.now == pytest.approx(started + 0.014 - pacer.margin_s)
    assert pacer.margin_s == pytest.approx(0.00075)
    assert pacer.held == 0


def test_input_arriving_during_the_wait_holds_the_step_back():
    watch = FakeInput(arrives_at=100.005)
    pacer = AheadPacer(watch.pending, watch.clock)
    pacer.observe_step(4, 0.014)
    assert pacer.hold(4, started_at=watch.now) is True
    assert watch.now == pytest.approx(100.005) and pacer.held == 1


def test_input_after_the_deadline_leaves_the_step_queued():
    watch = FakeInput(arrives_at=100.0139)
    pacer = AheadPacer(watch.pending, watch.clock)
    pacer.observe_step(4, 0.014)
    assert pacer.hold(4, started_at=watch.now) is False  # due at 100.0135 (0.5 ms margin)


def test_estimates_are_per_batch_size_and_smoothed():
    pacer = AheadPacer()
    pacer.observe_step(1, 0.006)
    pacer.observe_step(8, 0.007)
    pacer.observe_step(1, 0.010)
    assert pacer.expected_step_s(1) == pytest.approx(0.006 + 0.25 * 0.004)
    assert pacer.expected_step_s(8) == pytest.approx(0.007)
    assert pacer.expected_step_s(2) is None
