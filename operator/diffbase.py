"""kopf's diff base (the last handled "essence" of an object), built only where a handler reads it.

kopf builds every watched object's essence on every event, before it looks for handlers: a deep copy of
the whole object (status and metadata included, both then deleted), a second deep copy to clear its own
annotations, and a diff against the stored one. Only changing handlers (on.create, on.update, on.resume,
on.delete) and daemons or timers read them, and the operator has those on WarpRuns alone: its Jobs have
an event handler only (operator/handlers.py), so each of the ~3 events per Job paid for a deep copy of
the Job that nothing read. And every status PATCH the operator makes comes back as a WarpRun event whose
essence was built from a deep copy of the whole status, then dropped.

`RunEssence` gives kopf the same essences for the kinds it tracks (WarpRuns), built without copying the
status or the metadata that the essence leaves out, and none for other kinds (kopf then sees no change,
which for a kind without changing handlers, daemons or timers is all it would have done with one).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import kopf

# What the essence keeps of metadata (kopf's DiffBaseStorage.build), and what kopf's key conventions read
# (mark_key: ownerReferences; the kind stays at the top level).
_METADATA_READ = ("labels", "annotations", "ownerReferences")


class RunEssence(kopf.AnnotationsDiffBaseStorage):
    def __init__(self, *, tracked: Collection[tuple[str, str]], **kwargs: Any) -> None:
        """`tracked`: (API group, kind) of the resources with changing handlers, daemons or timers."""
        super().__init__(**kwargs)
        self.tracked = frozenset(tracked)

    def tracks(self, body: kopf.Body) -> bool:
        group = str(body.get("apiVersion") or "").rpartition("/")[0]
        return (group, body.get("kind")) in self.tracked

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return super().fetch(body=body) if self.tracks(body) else None

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:  # fmt: skip
        if not self.tracks(body):
            return None  # type: ignore[return-value]  # kopf's processing takes None as "no essence"
        extra = list(extra_fields or ())
        if extra:  # a handler that reads chosen fields (of the status, say): kopf's own path
            return super().build(body=body, extra_fields=extra)
        meta = body.get("metadata") or {}
        light = {k: v for k, v in body.items() if k not in ("status", "metadata")}
        light["metadata"] = {k: meta[k] for k in _METADATA_READ if k in meta}
        return super().build(body=kopf.Body(light))
