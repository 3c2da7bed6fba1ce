"""The Jobs of each run as the operator's watch reports them: an informer's cache, so a reconcile does not LIST.

A LIST of a run's Jobs by label costs the API server a scan of every Job in the namespace (its watch
cache has no label index), so one LIST per reconcile made the operator's cost grow with the square of the
number of runs. The operator already watches every Job labelled kwarp.dev/run (the Job handler): each
event updates this index, and a reconcile reads its run's Jobs from here.

A run's entry is filled once by a LIST (`seed`) and then kept by events. The LIST and the events race;
resourceVersions order them (a newer version of an object wins) and a Job seen deleted is not brought back
by an older LIST (tombstones). The resync timer re-LISTs each run (`stale`), which also drops a Job whose
deletion the watch missed (kopf re-lists after a watch error but reports no deletions from the gap).
Without an index (Reconciler(job_index=None)) the reconcile LISTs, as before.

`event` says whether the event brought anything a reconcile reads (`same`: operator/observe.read_alike):
a Job's ADDED event after the pass that created it put the POST's answer here, or a label someone else
set, queues no pass (each pass costs the operator CPU and store reads, and delays the runs queued behind).

`version` moves whenever a run's entry changes in a way a reconcile may read (news, a LIST, a resync): a pass
that finds it where the last pass read it reads the same Jobs (operator/passes.py).

`keep` says what is kept of each Job (operator/jobrecord.py's job_record: the fields a reconcile reads,
not the pod template), so that thousands of Jobs do not lengthen every full garbage collection.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, run)
Same = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
Keep = Callable[[Mapping[str, Any]], dict[str, Any]]


def _rv(obj: Mapping[str, Any]) -> int | None:
    """resourceVersion as a number when it is one (etcd's are), for ordering versions of one object."""
    value = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _newer(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    if old is None:
        return True
    if (new.get("metadata") or {}).get("uid") != (old.get("metadata") or {}).get("uid"):
        return True  # another Job of the same name: the event is about the live one
    a, b = _rv(new), _rv(old)
    return a is None or b is None or a >= b


class JobIndex:
    def __init__(self, same: Same | None = None, keep: Keep = dict) -> None:
        self._same = same  # (cached, newer version) -> a reconcile reads them alike; None: never alike
        self._keep = keep  # what of a Job is kept: the whole body (a shallow copy) unless told
        self._jobs: dict[Key, dict[str, dict[str, Any]]] = {}
        self._seeded: set[Key] = set()
        self._deleted: dict[Key, dict[str, int | None]] = {}  # Job uid -> resourceVersion it was deleted at
        self._versions: dict[Key, int] = {}
        self._creating: dict[tuple[Key, str], bool] = {}  # Jobs a pass is POSTing -> a first sight was let pass
        self._counter = itertools.count(1)  # one sequence for all runs: a forgotten run's version never returns
        self._lock = threading.Lock()

    def _moved(self, key: Key) -> bool:
        self._versions[key] = next(self._counter)
        return True

    def creating(self, namespace: str, run: str, name: str, *, done: bool = False, accounted: bool = False) -> None:
        """A pass is about to POST the Job `name` (`done`: the POST returned; `accounted`: with the Job, which the
        pass accounted for). Meanwhile the watch's first sight of that Job, as created (no status yet), moves no
        version: it often overtakes the POST's answer. Unless the pass got the Job back, the version moves then."""
        key = (namespace, run)
        with self._lock:
            if not done:
                self._creating[(key, name)] = False
            elif self._creating.pop((key, name), False) and not accounted:
                self._moved(key)

    def version(self, namespace: str, run: str) -> int:
        """The run's entry's version: it changes with every event called news, every LIST and every resync."""
        with self._lock:
            return self._versions.get((namespace, run), 0)

    def event(self, namespace: str, run: str, job: Mapping[str, Any], *, deleted: bool, accounted: bool = False) -> bool:
        """A watch event about one Job of a run (ADDED/MODIFIED/DELETED, or kopf's initial listing), or a Job
        as the API server answered its creation. Returns whether a reconcile of the run could read anything
        new from it: not for a version older than the cached one, a late event about a deleted Job, or a
        version the cached one reads alike (`same`). `accounted`: the Job as the pass that created it got it
        back, which that pass has accounted for: the run's version does not move (a pass queued after it
        compares what it would read with what the creating pass read, operator/passes.py)."""
        meta = job.get("metadata") or {}
        name, uid = meta.get("name"), meta.get("uid")
        key = (namespace, run)
        with self._lock:
            if not name:
                return self._moved(key)
            jobs = self._jobs.setdefault(key, {})
            if deleted:
                current = jobs.get(name)
                if current is not None and (current.get("metadata") or {}).get("uid") == uid:
                    del jobs[name]
                if uid:
                    self._deleted.setdefault(key, {})[uid] = _rv(job)
                return self._moved(key)
            if uid and uid in self._deleted.get(key, {}):
                return False  # a late event about a Job already seen deleted
            cached = jobs.get(name)
            if not _newer(job, cached):
                return False
            jobs[name] = self._keep(job)
            if (cached is None and (key, name) in self._creating and not job.get("status") and self._same is not None
                    and self._same(job, job)):  # not a gang Job, nor one waiting in Kueue's queue
                self._creating[(key, name)] = True
                return True  # as created, overtaking the POST's answer: the creating pass accounts for it
            if cached is None or self._same is None or (cached.get("metadata") or {}).get("uid") != uid:
                return accounted or self._moved(key)
            return not self._same(cached, job) and (accounted or self._moved(key))

    def jobs(self, namespace: str, run: str) -> list[dict[str, Any]] | None:
        """The run's Jobs, or None when its entry has not been seeded by a LIST (or is due for another)."""
        return self.jobs_at(namespace, run)[0]

    def jobs_at(self, namespace: str, run: str) -> tuple[list[dict[str, Any]] | None, int]:
        """The run's Jobs (as `jobs`) and the version they are at, read together."""
        key = (namespace, run)
        with self._lock:
            version = self._versions.get(key, 0)
            if key not in self._seeded:
                return None, version
            return list(self._jobs.get(key, {}).values()), version

    def seed(self, namespace: str, run: str, listing: list[dict[str, Any]], list_rv: str | None = None) -> None:
        """Merge a LIST of the run's Jobs: it wins over older cached versions, and a cached Job it lacks is
        dropped unless an event showed it after the LIST was served (a resourceVersion above the LIST's)."""
        key = (namespace, run)
        at = _rv({"metadata": {"resourceVersion": list_rv}})
        with self._lock:
            cached = self._jobs.setdefault(key, {})
            tombs = self._deleted.get(key, {})
            listed = {}
            for job in listing:
                meta = job.get("metadata") or {}
                if meta.get("uid") in tombs:
                    continue
                current = cached.get(meta.get("name"))
                listed[meta.get("name")] = self._keep(job) if _newer(job, current) else current
            for name, job in cached.items():
                if name not in listed and at is not None and (_rv(job) or 0) > at:
                    listed[name] = job  # created after the LIST was served
            self._jobs[key] = listed
            self._seeded.add(key)
            self._moved(key)

    def stale(self, namespace: str, run: str) -> None:
        """Have the next reconcile of the run LIST again (the resync timer calls it)."""
        with self._lock:
            self._seeded.discard((namespace, run))
            self._moved((namespace, run))

    def forget(self, namespace: str, run: str) -> None:
        key = (namespace, run)
        with self._lock:
            self._jobs.pop(key, None)
            self._seeded.discard(key)
            self._deleted.pop(key, None)
            self._versions.pop(key, None)
