"""The watchdog's part of a reconcile (operator/reconcile.py): the reads and writes behind the pure
decisions of operator/watchdog.py. It fails trainer Jobs that stopped progressing, judged from their
heartbeats in the store (not while the store is unreachable), and reports pods that cannot start as
the condition PodsStuck."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kwarp.core.spec import WarpRunSpec
from kwarp.core.status import WarpRunStatus
from kwarp.store import Store, StoreError, layout

from . import conditions as C
from .kube import Kube
from .observe import JobView
from .stores import owner_of
from .watchdog import NO_PROGRESS, Heartbeat, fail_patch, parse_time, stalled, stuck_condition, stuck_pods

log = logging.getLogger(__name__)


def watch_over(kube: Kube, events: Callable[[Mapping[str, Any], str, str, str], None], body: Mapping[str, Any],
               spec: WarpRunSpec, store: Store | None, views: list[JobView], status: WarpRunStatus, now: str,
               pods: list[dict[str, Any]] | None = None) -> WarpRunStatus:  # fmt: skip
    """Fail the run's stalled trainer Jobs (posting NoProgress) and return `status` with PodsStuck set or
    cleared. `store` None: unreachable, so no progress is judged; `pods`: the run's pods if this pass listed
    them already; `events` posts an Event about the run (reconcile.EventSink)."""
    meta = body["metadata"]
    namespace, name, generation = meta.get("namespace", "default"), meta["name"], meta.get("generation")
    deadline = spec.failure_policy.progress_deadline_seconds
    for v in views:
        # A gang's members share one Job: failing it for one stalled member would stop them all.
        if store is None or deadline is None or v.stalled or v.gang or v.task.kind != "train" or v.state != "Running":
            continue
        try:
            folder = owner_of(namespace, name, meta["uid"], spec).key  # the run's own folder
            beat = Heartbeat.parse(store.get_json(layout.member_heartbeat(folder, v.task.iteration, v.task.member)))
        except StoreError as err:  # judge progress on a later pass rather than fail work on a blip
            log.warning("%s/%s: cannot read the heartbeat of %s: %s", namespace, name, v.name, err)
            continue
        reason = stalled(v, beat, parse_time(now), deadline)
        if reason is not None:
            kube.patch_job(namespace, v.name, fail_patch(reason))
            events(body, "Warning", NO_PROGRESS, f"failing Job {v.name}: {reason}"[:1000])
    # Pods are listed only while a Job has an active pod that is not ready (its status counts them): a
    # pod waiting for an image or a Secret is one. A label-selected LIST costs a real API server a scan
    # of every pod of the namespace, so a LIST at every reconcile grows with the runs there.
    unready = [v.name for v in views if v.state in ("Pending", "Running") and v.unready_pods]
    if unready and pods is None:
        pods = kube.run_pods(namespace, name)
    stuck = stuck_pods(pods or [], unready) if unready else []
    if stuck:
        reason, message = stuck_condition(stuck)
        conditions = C.set_condition(status.conditions, C.PODS_STUCK, True, reason, message, now=now,
                                     generation=generation)  # fmt: skip
    else:
        conditions = C.clear_condition(status.conditions, C.PODS_STUCK, C.PODS_STARTED, "", now=now,
                                       generation=generation)  # fmt: skip
    return status.model_copy(update={"conditions": conditions})
