"""Fencing tokens for the writers of a task: the newest attempt wins, a stale one cannot publish.

Each task process claims its task's lease when it starts: the lease record (a small JSON object in
the store) gets the next epoch and the process's nonce. The epoch is the process's fencing token:

- before it publishes, a writer checks that the lease still holds its epoch and nonce: once a newer
  attempt has started (a retried Job, a replacement pod, a second `kwarp run` on another machine),
  the older one raises FencedOut and publishes nothing more;
- the checkpoint pointer records the epoch as its generation and never moves to a lower one
  (kwarp.store.versions), which also covers a check and a write racing each other.

Claims are compare-and-swap writes (S3 conditional PUTs; a lock on file://), retried when another
claim got in between, so two attempts never hold the same epoch.
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
        f"{what}: a newer attempt of this task ({doc.get('holder')}, epoch {doc['epoch']}, started {since} UTC) "
        f"has taken over; this attempt ({fence.holder}, epoch {fence.epoch}) stops without publishing"
    )
