"""What the Job index keeps of a Job: the fields a reconcile reads, in the Job's own shape. Pure.

A Job as the API server returns it carries its pod template (containers, environment with the run's whole
spec as JSON, volumes, security settings): ~95% of its objects, and none of it read by a pass but a
multi-node Job's `subdomain` and a gang Job's nodes per member. The index holds every Job of every run
for the operator's lifetime, and CPython's full collections walk all of it: at 1000 runs (9000 Jobs)
those collections stopped the operator's process for up to 1.5 s (docs/performance.md, "Paced Jobs").
So the index keeps this record instead, and every reader of the index's Jobs reads it unchanged:

    owned_by, view, read_alike, unready_pods     operator/observe.py
    is_gang, nodes_of, needs_service,            operator/jobs.py
    service_manifest, queue_label
    gang_views, failed_tries, next_attempt,      operator/gang.py
    iteration_of, attempt_of
    job_finished, Reconciler._ensure_services    operator/reconcile.py

tests/test_jobrecord.py reads each of them over whole Jobs and over their records, and fails if one reads
a field the record drops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .jobs import NODES_ENV

# metadata fields a pass reads (ownership, task and attempt labels, Kueue's queue label, the watchdog's
# annotation, creation and deletion times) and those the index orders versions by (uid, resourceVersion).
METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences",
            "creationTimestamp", "deletionTimestamp")  # fmt: skip
SPEC = ("suspend", "completions")  # suspended or queued; a gang Job's pods (members x nodes)


def job_record(job: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `job` a reconcile reads, in the Job's shape; the status whole (a few small fields)."""
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or {}
    pod_kept: dict[str, Any] = {}
    if "subdomain" in pod:  # a multi-node Job: it has a headless Service (needs_service)
        pod_kept["subdomain"] = pod["subdomain"]
    containers = pod.get("containers") or []
    nodes = [e for e in (containers[0].get("env") or []) if e.get("name") == NODES_ENV] if containers else []
    if nodes:  # a gang Job of multi-node members (nodes_of)
        pod_kept["containers"] = [{"env": nodes}]
    record: dict[str, Any] = {
        "metadata": {k: meta[k] for k in METADATA if k in meta},
        "spec": {**{k: spec[k] for k in SPEC if k in spec}, "template": {"spec": pod_kept}},
    }
    if "status" in job:
        record["status"] = job["status"]
    return record
