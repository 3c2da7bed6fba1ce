"""The operator's reconcile queue (operator/workqueue.py): one pass per run however many events, no two
passes of a run at once, a finished Job's run ahead of bookkeeping (bounded), retries after a failure."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from kwarp.operator.workqueue import WorkQueue
from tests.kube import wait_for


class Clock:
    """A clock the test moves: ranks and retry times are read from it, never from the wall."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """A process function that records each pass and holds the first pass of `hold` until released."""

    def __init__(self, hold: Hashable | None = None) -> None:
        self.passes: list[Hashable] = []
        self.hold = hold
        self.entered, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.running: set[Hashable] = set()
        self.overlaps = 0

    def __call__(self, key: Hashable) -> None:
        with self.lock:
            if key in self.running:
                self.overlaps += 1
            self.running.add(key)
            self.passes.append(key)
            first = self.passes.count(key) == 1
        try:
            if key == self.hold and first:
                self.entered.set()
                assert self.release.wait(10)
        finally:
            with self.lock:
                self.running.discard(key)


def test_events_while_a_run_waits_or_runs_cost_one_more_pass() -> None:
    gate = Gate(hold="a")
    queue = WorkQueue(gate, workers=2).start()
    try:
        queue.add("a")
        assert gate.entered.wait(10)
        for _ in range(5):  # five events while a's pass runs
            queue.add("a")
            queue.add("a", urgent=True)
        queue.add("b")
        wait_for(lambda: "b" in gate.passes, 10, message="b reconciled while a's pass runs")
        assert queue.pending() == 1  # a, once
        gate.release.set()
        wait_for(lambda: gate.passes.count("a") == 2 and queue.pending() == 0, 10, message="one more pass of a")
    finally:
        queue.stop(5)
    assert gate.passes.count("a") == 2 and gate.passes.count("b") == 1
    assert gate.overlaps == 0


def test_events_for_a_queued_run_fold_into_its_one_pass() -> None:
    """With every worker busy, a run added many times is queued once (before: one pass per event)."""
    gate = Gate(hold="busy")
    queue = WorkQueue(gate, workers=1).start()
    try:
        queue.add("busy")
        assert gate.entered.wait(10)
        for _ in range(10):
            queue.add("a")
        assert queue.pending() == 1
        gate.release.set()
        wait_for(lambda: queue.pending() == 0 and "a" in gate.passes, 10, message="a reconciled")
    finally:
        queue.stop(5)
    assert gate.passes == ["busy", "a"]


def test_a_run_whose_job_finished_goes_ahead_of_bookkeeping_queued_before_it() -> None:
    clock = Clock()
    gate = Gate(hold="busy")
    queue = WorkQueue(gate, workers=1, head_start=5.0, clock=clock).start()
    try:
        queue.add("busy")
        assert gate.entered.wait(10)
        queue.add("started-1")  # bookkeeping: a Job started
        clock.now += 1
        queue.add("started-2")
        clock.now += 1
        queue.add("finished", urgent=True)  # a Job finished: 2 s after the first, ahead by the head start
        clock.now += 1
        queue.add("started-1", urgent=True)  # a queued run whose Job then finished moves up, after `finished`
        gate.release.set()
        wait_for(lambda: len(gate.passes) == 4, 10, message="all reconciled")
    finally:
        queue.stop(5)
    assert gate.passes == ["busy", "finished", "started-1", "started-2"]


def test_bookkeeping_older_than_the_head_start_is_not_passed_over() -> None:
    clock = Clock()
    gate = Gate(hold="busy")
    queue = WorkQueue(gate, workers=1, head_start=5.0, clock=clock).start()
    try:
        queue.add("busy")
        assert gate.entered.wait(10)
        queue.add("old")
        clock.now += 6  # waited longer than an urgent run's head start
        queue.add("finished", urgent=True)
        gate.release.set()
        wait_for(lambda: len(gate.passes) == 3, 10, message="all reconciled")
    finally:
        queue.stop(5)
    assert gate.passes == ["busy", "old", "finished"]


def test_a_failed_pass_is_tried_again_after_a_backoff() -> None:
    clock = Clock()
    calls: list[str] = []

    def flaky(key: Hashable) -> None:
        calls.append(str(key))
        if key == "a" and calls.count("a") <= 2:
            raise RuntimeError("API server unavailable")

    queue = WorkQueue(flaky, workers=1, retry_delays=(1.0, 2.0), clock=clock).start()
    try:
        queue.add("a")
        wait_for(lambda: queue.retrying() == 1, 10, message="first pass failed")
        assert calls == ["a"] and queue.pending() == 0  # not queued again at once: waits for its retry time
        clock.now += 1.0
        queue.add("other")  # wakes a worker, which finds the retry due
        wait_for(lambda: calls.count("a") == 2 and queue.retrying() == 1, 10, message="retried after 1 s, failed")
        clock.now += 1.0
        queue.add("other")
        wait_for(lambda: calls.count("other") == 2, 10, message="other reconciled")
        assert calls.count("a") == 2  # the second failure backs off 2 s, not 1
        clock.now += 1.0
        queue.add("other")
        wait_for(lambda: calls.count("a") == 3, 10, message="retried after 2 s")
    finally:
        queue.stop(5)
