"""What the operator removes when a WarpRun is deleted (kopf's delete handler, operator/handlers.py, holds
the run's finalizer until these return). With `cleanup: Delete` the run's Jobs are stopped first, so that
nothing writes any more, then the run's own folder <namespace>/<name>/<uid>/ is deleted from the store if
its ownership record is this run's (or absent); nothing outside that folder is ever deleted. A store that
stays down past the grace period keeps the data, and an Event says where. The run's Pushgateway groups go
too. What the reconciler remembers of the run is its own to forget (Reconciler.forget)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kwarp.core.ownership import may_delete, owner_key, storage_allowed
from kwarp.observability import telemetry

from .acceptance import effective_spec
from .kube import Kube
from .observe import owned_by
from .status import previous_status
from .stores import StoreOpener, owner_of, store_url

log = logging.getLogger(__name__)
# Seconds per Pushgateway request when a deleted run's groups are removed (bounded: it runs in a handler).
PUSHGATEWAY_TIMEOUT = 3.0

Events = Callable[[Mapping[str, Any], str, str, str], None]  # posts an Event about the run (reconcile.EventSink)


class CleanupPending(Exception):
    """The run's Jobs are still stopping: the store is cleaned up once they are gone (retry soon)."""


def delete_run_data(kube: Kube, stores: StoreOpener, allowed_prefixes: tuple[str, ...], events: Events,
                    namespace: str, name: str, body: Mapping[str, Any]) -> None:  # fmt: skip
    """With `cleanup: Delete`, delete the run's Jobs and, once none is left, its own folder in the store
    (if its ownership record allows). Raises CleanupPending while Jobs remain, StoreError while the store
    is unreachable. With Retain (the default) nothing is removed here: garbage collection deletes the
    Jobs (and their Services, which the Jobs own) once the WarpRun is gone."""
    uid = body.get("metadata", {}).get("uid")
    previous = previous_status(body.get("status"))
    spec, _ = effective_spec(body, previous.accepted_spec)
    if spec is None or spec.cleanup != "Delete" or not uid:
        return
    jobs = [j for j in kube.list_jobs(namespace, name) if owned_by(j, uid)]
    for job in jobs:
        if not job["metadata"].get("deletionTimestamp"):
            kube.delete_job(namespace, job["metadata"]["name"])
    if jobs:
        raise CleanupPending(f"cleanup: Delete waits for {len(jobs)} Job(s) of {name} to stop")
    if not storage_allowed(spec.storage.url, allowed_prefixes):
        # Never written (the run got no Jobs): nothing of it to delete, and no reason to touch a store
        # this operator does not serve.
        return
    store = stores.open(namespace, spec)
    me = owner_of(namespace, name, uid, spec)
    where = f"{store_url(spec).rstrip('/')}/{me.key}"
    verdict = may_delete(store.get_json(owner_key(me.key)), me, where=where)
    if verdict.allowed:
        removed = store.delete_prefix(f"{me.key}/")
        events(body, "Normal", "CheckpointsDeleted", f"cleanup: Delete removed {removed} objects under {where}/")
    else:
        events(body, "Warning", "StoreConflict", f"cleanup: Delete deleted nothing: {verdict.message}"[:1000])


def retain_run_data(events: Events, namespace: str, name: str, body: Mapping[str, Any], err: Exception) -> None:
    """The store stayed unreachable through the cleanup grace period: keep the data and say where."""
    previous = previous_status(body.get("status"))
    spec, _ = effective_spec(body, previous.accepted_spec)
    uid = body.get("metadata", {}).get("uid") or ""
    where = (f"{store_url(spec).rstrip('/')}/{owner_of(namespace, name, uid, spec).key}/"
             if spec is not None and uid else "the run's store")  # fmt: skip
    events(body, "Warning", "CheckpointsRetained",
           f"cleanup: Delete could not reach the store ({err}); the run's data remains under {where}: "
           "delete it with your S3 client once the store is back"[:1000])  # fmt: skip


def delete_pushed_groups(gateway: str | None, namespace: str, name: str) -> None:
    """Delete the run's groups on the Pushgateway (which keeps every pushed group until it is deleted)."""
    if not gateway:
        return
    try:
        deleted = telemetry.delete_run_groups(gateway, name, namespace=namespace, timeout=PUSHGATEWAY_TIMEOUT)
    except (OSError, ValueError) as err:
        # Metrics are not the user's data: a gateway that is down must not hold the WarpRun's
        # finalizer. The series stay until the gateway's groups are deleted by hand (docs/observability.md).
        log.warning("run %s/%s: could not delete its Pushgateway groups at %s: %s", namespace, name, gateway, err)
        return
    log.info("run %s/%s: deleted %d Pushgateway group(s)", namespace, name, deleted)
