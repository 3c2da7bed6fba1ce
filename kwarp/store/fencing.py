"""Fencing tokens for the writers of a task: the newest attempt wins, a stale one cannot publish.

Each task process claims its task's lease when it starts: the lease record (a small JSON object in
the store) gets the next epoch and the process's nonce. The epoch is the process's fencing token:

- before it publishes, a writer checks that the lease still holds its epoch and nonce: once a newer
  attempt has started (a retried Job, a replacement pod, a second `kwarp run` on another machine),
  the older one raises FencedOut and publishes nothing more;
- the checkpoint pointer records the epoch as its generation and never moves to a lower one
  (kwarp.store.versions), which also covers a check and a write racing each other;
- a small object is one compare-and-swap around the check (S3: If-Match the ETag read before the check;
  file://: the check and the rename under the object's lock), so a stale attempt never lands one over a
  newer attempt's.

Claims are compare-and-swap writes (S3 conditional PUTs; a lock on file://), retried when another
claim got in between, so two attempts never hold the same epoch.

Every task command (prepare, train, merge, eval, export) claims `<run>/leases/<task>.json`
(kwarp.store.layout.lease) once at its start, through `claim_task`, and passes the Fence to every write
it makes for its task. A fenced-out attempt exits with FENCED_EXIT_CODE (kwarp.cli), which neither
executor counts as a failure of the task: a newer attempt of it is running (docs/internals.md).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kwarp.store.base import FencedOut, StoreError, WriteConflict

if TYPE_CHECKING:
    from kwarp.store.base import Store

_CLAIM_ATTEMPTS = 20

# The exit code of a task process that a newer attempt of its task fenced out (kwarp.cli). 75 is
# sysexits' EX_TEMPFAIL; no other kwarp exit means it (0, 1, 2 user errors, 130 Ctrl-C, 143 SIGTERM).
FENCED_EXIT_CODE = 75


@dataclass(frozen=True)
class Fence:
    """A writer's fencing token: the epoch it holds on its task's lease (a store key)."""

    lease: str
    epoch: int
    holder: str
    nonce: str


def default_holder() -> str:
    """Who writes, for messages: the pod's name in a cluster (KWARP_POD_NAME), else host and pid."""
    pod = os.environ.get("KWARP_POD_NAME")
    return f"pod {pod}" if pod else f"{socket.gethostname()} pid {os.getpid()}"


def _parse(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
        int(doc["epoch"])
        return doc
    except (ValueError, KeyError, TypeError):
        return None  # a damaged lease: the next claim replaces it


def claim(store: Store, lease: str, holder: str | None = None) -> Fence:
    """Take the lease for a new attempt: the next epoch, compare-and-swap."""
    holder = holder or default_holder()
    for _ in range(_CLAIM_ATTEMPTS):
        current = store.get_versioned(lease)
        doc = _parse(current[0]) if current is not None else None
        epoch = (int(doc["epoch"]) if doc else 0) + 1
        nonce = uuid.uuid4().hex
        record = {"epoch": epoch, "holder": holder, "nonce": nonce, "claimed": time.time()}
        try:
            store.put_if(lease, json.dumps(record, sort_keys=True).encode(), etag=current[1] if current else None)
        except WriteConflict:
            mine = _parse(store.get_bytes(lease))
            if mine is not None and mine.get("nonce") == nonce:
                break  # our write landed; its acknowledgement was lost and the retry saw our own ETag
            continue
        break
    else:
        raise StoreError(f"cannot claim {lease}: {_CLAIM_ATTEMPTS} other claims got in first")
    return Fence(lease=lease, epoch=epoch, holder=holder, nonce=nonce)


def claim_task(store: Store, run_folder: str, task_id: str, holder: str | None = None) -> Fence:
    """Claim the lease of task `task_id` (Task.id: prepare, i0-m1, i0-merge, ...) of the run in `run_folder`."""
    from kwarp.store import layout

    return claim(store, layout.lease(run_folder, task_id), holder)


def lease_task(lease: str) -> str:
    """The task a lease key belongs to, for messages: `<run>/leases/i0-m1.json` -> `task i0-m1`."""
    name = lease.rsplit("/", 1)[-1]
    return f"task {name.removesuffix('.json')}" if "/leases/" in f"/{lease}" else "this task"


def check(store: Store, fence: Fence, what: str) -> None:
    """Raise FencedOut if a newer attempt has claimed the lease since `fence` was taken."""
    doc = _parse(store.get_bytes(fence.lease))
    if doc is not None and doc.get("nonce") == fence.nonce and int(doc["epoch"]) == fence.epoch:
        return
    if doc is None:
        raise FencedOut(f"{what}: the lease {fence.lease} of this task is gone (the run's data was deleted?); "
                        f"this attempt ({fence.holder}) stops without publishing")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(doc.get("claimed") or 0)))
    raise FencedOut(
        f"{what}: a newer attempt of {lease_task(fence.lease)} holds the lease (epoch {doc['epoch']}, holder "
        f"{doc.get('holder')}, since {since} UTC); this attempt (epoch {fence.epoch}, {fence.holder}) "
        f"publishes nothing more"
    )
