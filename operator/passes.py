"""Which queued passes of a run would read nothing new: the work queue's "one more pass", skipped.

A run queued while its pass runs gets one more pass when that pass ends (operator/workqueue.py). Often the
event that queued it had already been read by the running pass: the Job handler updates the Job index and
then queues the run, so a pass that starts between the two reads the new state and is followed by a pass
over the same Jobs, the same WarpRun (or the status the first pass wrote) and nothing to do. In an instant
20-run benchmark run, 42 of 328 passes were such passes (docs/performance.md, "The operator's passes that
change nothing").

A pass reads the run's Jobs (the index's version of the run moves with every event it calls news, every
LIST and every resync, not with the Jobs a pass created, which that pass accounted for) and the WarpRun (its resourceVersion). `PassLedger` keeps, per run, what the last
successful pass read: the index version it read the Jobs at, the WarpRun's resourceVersion before it
read the run, and the resourceVersion its own status write produced when that write changed nothing else
a pass reads (spec, labels, annotations, deletion). A pass whose run shows exactly that is skipped; every
other pass runs. Not skipped, whatever the versions:

- a pass after a failed one (the failure forgets what was read: the retry runs);
- a pass asked for with `force`: the resync timer's (time: the watchdog's deadlines, the progress and ETA
  refresh from the store, a store that came back; it also has the index LIST again). The WarpRun handlers'
  passes are not forced: the run cache holds their event's version before they queue (operator/handlers.py),
  so a spec, label or annotation change, a suspend or a deletion is a new resourceVersion;
- the first pass of a run, and any pass without a Job index or a run cache (no versions to compare).

The store is read by a pass but has no version: a change there that no event announces is seen by the next
pass that runs, as before, since a skipped pass is one that the event which queued it did not need.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

Token = tuple[int, str | None]  # (the Job index's version of the run, the WarpRun's resourceVersion)

# What a pass reads of the WarpRun besides its status: a status write's answer that differs from the body
# the pass read in none of these is the pass's own write, and the status in it is the one the pass built.
_READ_METADATA = ("uid", "generation", "labels", "annotations", "deletionTimestamp", "ownerReferences")


def own_write(read: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether `stored` (the answer of a pass's status PATCH) differs from `read` (the WarpRun the pass read)
    in its status and resourceVersion only: no one changed the spec, labels or annotations in between."""
    a, b = read.get("metadata") or {}, stored.get("metadata") or {}
    return read.get("spec") == stored.get("spec") and all(a.get(k) == b.get(k) for k in _READ_METADATA)


def unchanged(last: tuple[int, frozenset[str | None]] | None, now: Token) -> bool:
    """Whether a run shows `now` what the last successful pass read (or wrote itself)."""
    return last is not None and last[0] == now[0] and now[1] in last[1]


class PassLedger:
    def __init__(self) -> None:
        self._read: dict[Hashable, tuple[int, frozenset[str | None]]] = {}
        self._forced: set[Hashable] = set()
        self._lock = threading.Lock()
        self.skipped = 0  # passes skipped, for tests and the benchmark

    def force(self, key: Hashable) -> None:
        """The next pass of `key` runs whatever it would read (kept until a pass begins after this call)."""
        with self._lock:
            self._forced.add(key)

    def begin(self, key: Hashable, now: Token | None) -> bool:
        """Whether the pass about to start should run: `now` is the run's token, read before the pass reads the
        run (a change of the run that lands in between makes the next pass run, never the reverse; the Jobs
        are read together with their version)."""
        with self._lock:
            forced = key in self._forced
            self._forced.discard(key)
            if forced or now is None or not unchanged(self._read.get(key), now):
                return True
            self.skipped += 1
            return False

    def done(self, key: Hashable, read: Token | None, written: str | None) -> None:
        """A pass that read `read` succeeded; `written`: the resourceVersion of its own status write, if any."""
        with self._lock:
            if read is None:
                self._read.pop(key, None)
            else:
                self._read[key] = (read[0], frozenset(v for v in (read[1], written) if v is not None))

    def failed(self, key: Hashable) -> None:
        with self._lock:
            self._read.pop(key, None)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._read.pop(key, None)
            self._forced.discard(key)
