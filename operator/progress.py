"""Progress and ETA of each run, read from the store's metrics at a bounded rate.

Reading a running member's metrics.jsonl costs a GET of the whole file (it grows by one row per step),
so a run's logs are read again only when `interval` seconds have passed since the last read, or when a
task completed since (the status then moves anyway). Between reads the reconcile reuses what was read,
and the status (hence the API server) sees no change: the status is written at most once per interval
on account of progress, never once per step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from kwarp.core.eta import RunProgress, StepLog, read_step_log, run_progress
from kwarp.core.plan import Task
from kwarp.core.spec import WarpRunSpec
from kwarp.store import Store, layout

CacheKey = tuple[str, str]  # (run uid, store url)


@dataclass(frozen=True)
class ProgressView:
    """What the status shows of a run's progress: per member step logs, the run's totals, when read."""

    logs: dict[tuple[int, int], StepLog] = field(default_factory=dict)
    run: RunProgress | None = None
    read_at: float = 0.0  # unix time of the read


@dataclass
class _Entry:
    view: ProgressView
    read_monotonic: float
    done: frozenset[Task]


class ProgressTracker:
    def __init__(self, interval: float = 30.0, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):  # fmt: skip
        self.interval = interval
        self.wall = wall
        self.monotonic = monotonic
        self.reads = 0  # metrics.jsonl GETs, for tests and the benchmark
        self._entries: dict[CacheKey, _Entry] = {}
        self._lock = threading.Lock()

    def forget(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == uid]:
                del self._entries[key]

    def view(self, key: CacheKey, store: Store, spec: WarpRunSpec, run: str, done: frozenset[Task],
             active: Collection[Task]) -> ProgressView:  # fmt: skip
        """The run's progress: read again from the store when due, else as last read."""
        with self._lock:
            entry = self._entries.get(key)
        now = self.monotonic()
        if entry is not None and entry.done == done and now - entry.read_monotonic < self.interval:
            return entry.view
        logs = dict(entry.view.logs) if entry is not None else {}
        for task in active:
            if task.kind == "train" and task not in done:
                self.reads += 1
                logs[(task.iteration, task.member)] = read_step_log(
                    store.get_bytes(layout.member_log(run, task.iteration, task.member)))
        view = ProgressView(logs=logs, run=run_progress(spec, done, logs), read_at=self.wall())
        with self._lock:
            self._entries[key] = _Entry(view=view, read_monotonic=now, done=done)
        return view
