"""How long a run's Jobs wait for Kueue, and how far the run is: the operator's per-run metrics.

A Job that Kueue manages is created suspended (creationTimestamp) and runs once Kueue admits it by
unsuspending it; the Job controller then sets status.startTime (and sets it again on every resume). So
the wait of a Job's first admission is startTime - creationTimestamp, read from the API server's own
clock (whole seconds), the same for every operator replica and across restarts. Each Job is observed
once, by uid; an operator observes only admissions from its own start on (`since`), so a restarted
operator does not count again what the one before it counted. Kueue re-admitting a Job it evicted is
not a new observation (the same uid): the histogram holds first admissions.

The run's progress ratio and estimated completion come from its status.progress (operator/progress.py
reads the store at a bounded rate), so the metrics and `kubectl get wr` agree.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from kwarp.core.status import WarpRunStatus
from kwarp.observability.metrics import OperatorMetrics

from .observe import JobView
from .watchdog import parse_time


@dataclass(frozen=True)
class Admission:
    """One Job's first admission by Kueue."""

    job: str
    uid: str
    task: str  # the task id (i0-m1, i0-merge, ...)
    queue: str
    created: str  # RFC 3339, as the API server wrote it
    admitted: str  # the Job's startTime
    wait_seconds: float


def admission(v: JobView) -> Admission | None:
    """The admission of a Kueue Job that has started, else None (not Kueue's, or still waiting)."""
    if not (v.queue and v.created and v.start_time):
        return None
    wait = max(0.0, parse_time(v.start_time) - parse_time(v.created))
    return Admission(job=v.name, uid=v.uid, task=v.task.id, queue=v.queue, created=v.created,
                     admitted=v.start_time, wait_seconds=wait)  # fmt: skip


def waiting(views: Iterable[JobView]) -> dict[str, int]:
    """Jobs waiting for admission now, by LocalQueue (a withdrawn Job, being deleted, does not wait)."""
    return dict(Counter(v.queue for v in views if v.state == "Queued" and v.queue and not v.deleting))


class AdmissionWatch:
    def __init__(self, metrics: OperatorMetrics | None, *, since: float | None = None):
        self.metrics = metrics
        # Whole seconds, as startTime is: an admission in the operator's first second counts.
        self.since = float(int(time.time() if since is None else since))
        self._observed: dict[tuple[str, str], set[str]] = {}  # (namespace, run) -> Job uids observed
        self._lock = threading.Lock()

    def observe(self, namespace: str, run: str, views: Iterable[JobView]) -> list[Admission]:
        """Record the run's new admissions and its waiting Jobs; returns the admissions new to this watch."""
        views = list(views)
        new = []
        with self._lock:
            seen = self._observed.setdefault((namespace, run), set())
            for v in views:
                if v.uid in seen or (found := admission(v)) is None:
                    continue
                seen.add(v.uid)
                if parse_time(found.admitted) >= self.since:
                    new.append(found)
        if self.metrics is not None:
            for a in new:
                self.metrics.admission_wait.labels(namespace=namespace, queue=a.queue).observe(a.wait_seconds)
            self.metrics.observe_waiting(namespace, run, waiting(views))
        return new

    def forget(self, namespace: str, run: str) -> None:
        with self._lock:
            self._observed.pop((namespace, run), None)


def observe_progress(metrics: OperatorMetrics | None, namespace: str, run: str, status: WarpRunStatus) -> None:
    """The run's progress ratio and ETA series, from the status just written."""
    progress = status.progress
    if metrics is None or progress is None:
        return
    eta = progress.estimated_completion_time
    metrics.run.set_progress(namespace, run, progress.steps_done, progress.steps_total,
                             parse_time(eta) if eta else None)  # fmt: skip
