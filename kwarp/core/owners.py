"""Ownership records in a store: read them, claim a folder. The decisions are kwarp.core.ownership's.

Shared by the operator (claim before the first Job, check before cleanup), the embedded runner
(find its own uid again, claim) and `kwarp report` (find a run's folder by name).
"""

from __future__ import annotations

import json

from kwarp.core.ownership import Owner, Verdict, decide, owner_key
from kwarp.store import Store
from kwarp.store.base import WriteConflict


def read_owners(store: Store, namespace: str, name: str) -> list[Owner]:
    """The valid ownership records under <namespace>/<name>/ (one per uid); unreadable ones are skipped."""
    out = []
    for uid in store.folders(f"{namespace}/{name}/"):
        try:
            out.append(Owner.from_json(store.get_json(owner_key(f"{namespace}/{name}/{uid}"))))
        except ValueError:
            continue
    return out


def claim(store: Store, me: Owner, where: str) -> Verdict:
    """Read the run folder's ownership record and write ours first if there is none. The write is
    create-only (put_if with no version): of two writers one wins, the other reads the winner's record."""
    key = owner_key(me.key)
    verdict = decide(store.get_json(key), me, where=where)
    if verdict.action != "claim":
        return verdict
    try:
        store.put_if(key, json.dumps(me.to_json(), indent=1, sort_keys=True).encode(), etag=None)
    except WriteConflict:
        verdict = decide(store.get_json(key), me, where=where)
        return Verdict("own") if verdict.action == "claim" else verdict
    return Verdict("own")
