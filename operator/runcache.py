"""The WarpRuns as the operator's watch reports them: an informer's cache, so a reconcile does not GET its run.

kopf already watches every WarpRun; an event handler (operator/handlers.py) puts each version it sees
here before any other handler of that event runs (kopf calls event handlers first), and the reconciler
puts the object its status PATCH returns. A reconcile reads its run from here only: a run the cache has
not seen is one the watch has not shown yet (or one deleted), and its first sighting queues a reconcile
(as an informer-fed controller reads NotFound from its cache). The GET was one of the three API calls of
every reconcile (the benchmark measured it at ~40% of the API time before a reconcile could create the
next Job at 100 runs), and the operator no longer needs `get` on WarpRuns.

Versions are ordered by resourceVersion (a newer version of an object wins, so an old event arriving after
a PATCH response cannot roll the status back), and a run seen deleted is not brought back by a late
response about it (tombstones, by uid, the latest `kept`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)
TOMBSTONES_KEPT = 4096


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def _key(obj: Mapping[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    return (meta.get("namespace") or "default", name) if name else None


class RunCache:
    def __init__(self, kept: int = TOMBSTONES_KEPT) -> None:
        self._runs: dict[Key, dict[str, Any]] = {}
        self._deleted: dict[str, None] = {}  # uids of deleted runs, oldest first
        self._kept = kept
        self._lock = threading.Lock()

    def put(self, obj: Mapping[str, Any] | None) -> bool:
        """A version of a run (a watch event's object, or an API response): kept if newer than the cached
        one. True when the cache had no run of that name before."""
        if not obj or (key := _key(obj)) is None:
            return False
        uid = (obj.get("metadata") or {}).get("uid")
        with self._lock:
            if uid in self._deleted:
                return False
            old = self._runs.get(key)
            if old is not None and (old.get("metadata") or {}).get("uid") == uid:
                a, b = _rv(obj), _rv(old)
                if a is not None and b is not None and a < b:
                    return False
            self._runs[key] = dict(obj)
            return old is None

    def deleted(self, obj: Mapping[str, Any]) -> None:
        """The run is gone (a DELETED event): forget it, and ignore what arrives about it later."""
        if (key := _key(obj)) is None:
            return
        uid = (obj.get("metadata") or {}).get("uid")
        with self._lock:
            current = self._runs.get(key)
            if current is not None and (current.get("metadata") or {}).get("uid") in (uid, None):
                del self._runs[key]
            if uid:
                self._deleted[uid] = None
                while len(self._deleted) > self._kept:
                    del self._deleted[next(iter(self._deleted))]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._runs.get((namespace, name))
