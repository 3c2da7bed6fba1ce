"""The run's Jobs as the report reads them: `<run>/jobs.json` in the run's folder of the store.

`kwarp report` reads only the store, and a Job's admission and timing live in the API, where Jobs go
away (TTL, garbage collection with the WarpRun). So the operator records each attempt once it has
started, in the embedded runner's `runner.json` entry format (task, attempt, start, end, status, unix
seconds) plus what only a cluster has: the Job, its Kueue queue, its creation and admission times and
the wait between them (startTime - creationTimestamp, the API server's own clock).

Bounded and idempotent: one entry per Job that started (attempts are bounded by maxRetries), keyed by
the Job's uid and built only from the Job's own fields, so the same Jobs give the same file. The file
is written when an entry changes: when a Job ends, and when Kueue admits one (at most two PUTs per Job;
one for a Job without a queue), never per reconcile; an operator reads it once per run when it first needs it, so entries of Jobs since deleted
survive a restart. The end of a failed Job is when this operator saw it failed (the API gives a failed
Job no completionTime).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kwarp.store import Store, StoreError, layout

from .admission import admission
from .observe import JobView
from .watchdog import parse_time

log = logging.getLogger(__name__)

Entry = dict[str, Any]
STATUS = {"Succeeded": "succeeded", "Failed": "failed"}  # else "running" (started, not finished)


def entry(v: JobView, previous: Entry | None, now: float) -> Entry | None:
    """What jobs.json says of one Job: None until it has started."""
    if not v.start_time:
        return None
    status = STATUS.get(v.state, "running")
    end = parse_time(v.completion_time) if v.completion_time else None
    if end is None and status == "failed":
        end = (previous or {}).get("end") or now
    found = admission(v)
    return {
        "task": v.task.id, "attempt": v.attempt, "job": v.name, "uid": v.uid, "queue": v.queue,
        "created": parse_time(v.created) if v.created else None,
        "start": parse_time(v.start_time), "end": end, "status": status,
        "admission_wait_seconds": found.wait_seconds if found is not None else None,
    }  # fmt: skip


class JobLog:
    def __init__(self, wall: Callable[[], float] = time.time):
        self.wall = wall
        self.writes = 0  # PUTs of jobs.json, for tests and the benchmark
        self._entries: dict[str, dict[str, Entry]] = {}  # run folder -> Job uid -> entry as stored
        self._lock = threading.Lock()

    def record(self, store: Store, folder: str, views: Iterable[JobView]) -> None:
        """Bring the run's jobs.json up to date with its Jobs; a PUT only when an entry changed. A store
        error is logged and left for a later reconcile (the record is informative, the run goes on)."""
        try:
            self._record(store, folder, views)
        except StoreError as err:
            log.warning("%s: could not update %s: %s", folder, layout.jobs_json(folder), err)

    def _record(self, store: Store, folder: str, views: Iterable[JobView]) -> None:
        with self._lock:
            known = self._entries.get(folder)
        if known is None:
            raw = store.get_json(layout.jobs_json(folder)) or {}
            tasks = raw.get("tasks") if isinstance(raw, dict) else None
            known = {e["uid"]: e for e in tasks or [] if isinstance(e, dict) and isinstance(e.get("uid"), str)}
        now = self.wall()
        entries = dict(known)
        listed = set()
        for v in views:
            listed.add(v.uid)
            new = entry(v, known.get(v.uid), now)
            # A running Job without a queue waits for its end (one write per Job); a Kueue Job is recorded
            # when admitted too, so that its wait is in the store while it runs.
            if new is not None and v.uid and (new["status"] != "running" or new["queue"] or v.uid in known):
                entries[v.uid] = new
        for uid, e in known.items():
            if uid not in listed and e.get("status") == "running":
                # Gone while running: withdrawn from Kueue by a suspend, or deleted by hand.
                entries[uid] = {**e, "status": "interrupted", "end": now}
        if entries != known:
            ordered = sorted(entries.values(), key=lambda e: (e["start"], e["task"], e["attempt"]))
            store.put_json(layout.jobs_json(folder), {"executor": "operator", "tasks": ordered})
            self.writes += 1
        with self._lock:
            self._entries[folder] = entries

    def forget(self, uid: str) -> None:
        """A deleted run: drop what is kept of its folder (<namespace>/<name>/<uid>)."""
        with self._lock:
            for folder in [f for f in self._entries if f.rsplit("/", 1)[-1] == uid]:
                del self._entries[folder]
