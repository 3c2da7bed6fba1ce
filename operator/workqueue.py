"""The runs waiting for a reconcile, and the threads that reconcile them (controller-runtime's workqueue).

kopf's handlers only note that a run needs a pass (`add`); reconciles run on this queue's own threads.
Before, each event's handler ran the reconcile on one of kopf's handler threads, in the order the events
came: under load a Job's completion waited behind every earlier event of every run (the benchmark
measured handler calls waiting 8 s in kopf's executor at 100 runs), and a run with several events queued
was reconciled for each of them. Here:

- a run is in the queue at most once: the events that arrive while it waits, or while it is being
  reconciled, cost one pass (after the running one), not one each; no two passes of a run overlap;
- a run with urgent news (one of its Jobs finished: the next task may start) is served ahead of runs with
  bookkeeping only (a Job created or started), by `head_start` seconds: a run waits at most that much
  longer than it would in arrival order, so bookkeeping is delayed under load, never starved;
- a pass that raises is tried again after a backoff (1, 2, 5, 10, 30 s by consecutive failures of that
  run), as kopf retried a failed handler; a success resets it.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence

log = logging.getLogger(__name__)

URGENT_HEAD_START = 5.0  # seconds an urgent run goes ahead of bookkeeping queued before it
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class WorkQueue:
    def __init__(self, process: Callable[[Hashable], object], *, workers: int = 8,
                 head_start: float = URGENT_HEAD_START, retry_delays: Sequence[float] = RETRY_DELAYS,
                 clock: Callable[[], float] = time.monotonic, name: str = "reconcile"):  # fmt: skip
        self.process = process
        self.workers = workers
        self.head_start = head_start
        self.retry_delays = tuple(retry_delays)
        self.clock = clock
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []  # (rank, seq, key); stale entries skipped on pop
        self._rank: dict[Hashable, float] = {}  # key -> rank of its pending pass (queued, or due after the running one)
        self._running: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []  # (due, seq, key): retries
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- producers (any thread, including kopf's event loop: never blocks for long)
    def add(self, key: Hashable, *, urgent: bool = False) -> None:
        """Have `key` reconciled: once, however many times it is added before its pass starts."""
        with self._cond:
            self._add(key, urgent)

    def _add(self, key: Hashable, urgent: bool) -> None:
        rank = self.clock() - (self.head_start if urgent else 0.0)
        old = self._rank.get(key)
        if old is not None and old <= rank:
            return  # already due at least this soon
        self._rank[key] = rank
        if key not in self._running:  # a running key is queued again when its pass ends
            heapq.heappush(self._heap, (rank, next(self._seq), key))
            self._cond.notify()

    def pending(self) -> int:
        """Keys waiting for a pass (queued, or due again once their running pass ends)."""
        with self._cond:
            return len(self._rank)

    def retrying(self) -> int:
        """Keys waiting for the retry of a failed pass."""
        with self._cond:
            return len(self._delayed)

    # -- workers
    def start(self, context: contextvars.Context | None = None) -> WorkQueue:
        """Start the workers; each runs in its own copy of `context` (the caller's context variables)."""
        with self._cond:
            if self._threads:
                return self
            self._stopping = False
        for i in range(self.workers):
            run = (context or contextvars.copy_context()).copy().run
            thread = threading.Thread(target=run, args=(self._work,), name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Let the passes in progress finish; what is still queued is left (a restart's resume handlers
        queue every run again)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def _next(self) -> Hashable | None:
        with self._cond:
            while not self._stopping:
                now = self.clock()
                while self._delayed and self._delayed[0][0] <= now:
                    self._add(heapq.heappop(self._delayed)[2], False)
                while self._heap:
                    rank, _, key = heapq.heappop(self._heap)
                    if self._rank.get(key) == rank and key not in self._running:
                        del self._rank[key]
                        self._running.add(key)
                        return key
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(wait)
            return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            failed = False
            try:
                self.process(key)
            except Exception:
                failed = True
                log.exception("reconcile of %s failed; it is tried again", key)
            with self._cond:
                self._running.discard(key)
                if failed:
                    n = self._failures.get(key, 0)
                    self._failures[key] = n + 1
                    due = self.clock() + self.retry_delays[min(n, len(self.retry_delays) - 1)]
                    heapq.heappush(self._delayed, (due, next(self._seq), key))
                    self._cond.notify()  # a worker asleep without a timeout now has a retry to wake for
                else:
                    self._failures.pop(key, None)
                if key in self._rank:  # added while it ran: one more pass
                    heapq.heappush(self._heap, (self._rank[key], next(self._seq), key))
                # No other notify: this thread goes back to _next, which takes the key queued again (or
                # another: the heap holds no more keys than before this push). Waking every idle worker
                # after each pass (notify_all, before) cost each of them the GIL for nothing: 17% of the
                # reconcile threads' time holding the GIL in a profile at 100 runs.
