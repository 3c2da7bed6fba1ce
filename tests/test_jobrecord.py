"""What the Job index keeps of a Job (operator/jobrecord.py): every reader of the index's Jobs reads the same
from the record as from the whole Job, over Jobs the operator's own builders make (one-node and multi-node
members, gangs of one-node and multi-node members, in Kueue or not) in every state the API server shows.
A reader that needs a field the record drops gives another answer here for some of these Jobs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kwarp.core.plan import Task
from kwarp.core.spec import parse
from kwarp.operator.gang import attempt_of, failed_tries, gang_views, iteration_of, next_attempt
from kwarp.operator.jobindex import JobIndex
from kwarp.operator.jobrecord import job_record
from kwarp.operator.jobs import (
    ANNOTATION_STALLED,
    WorkerSettings,
    gang_manifest,
    is_gang,
    job_manifest,
    needs_service,
    nodes_of,
    queue_label,
    service_manifest,
)
from kwarp.operator.observe import owned_by, read_alike, view
from kwarp.operator.reconcile import job_finished

from .operator_harness import warprun

UID = "run-uid"
STAMP = "2026-12-03T16:00:00Z"
WORKER = WorkerSettings(image="w")


def run(nodes: int = 1, queue: str | None = None) -> Any:
    spec: dict[str, Any] = {"resources": {"trainer": {"nodes": nodes}}}
    if queue:
        spec["queueName"] = queue
    doc = warprun(Path("/tmp/store"), "demo", **spec)
    doc["metadata"].update(namespace="default", uid=UID)
    return parse(doc)


def served(job: dict[str, Any], n: int, status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """A Job as the API server returns it (a JSON copy, as from a watch)."""
    out = json.loads(json.dumps(job))
    out["metadata"].update(namespace="default", uid=f"job-{n}", resourceVersion=str(100 + n), creationTimestamp=STAMP,
                           generation=1, **meta)  # fmt: skip
    if status is not None:
        out["status"] = status
    return out


COMPLETE = {"startTime": STAMP, "completionTime": STAMP, "succeeded": 1, "ready": 0,
            "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "done"}]}  # fmt: skip
FAILED = {"startTime": STAMP, "failed": 2, "ready": 0,
          "conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "x"},
                         {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "x"}]}  # fmt: skip
RUNNING = {"startTime": STAMP, "active": 1, "ready": 1}
UNREADY = {"startTime": STAMP, "active": 2, "ready": 1}


def jobs() -> list[dict[str, Any]]:
    one, multi, queued = run(), run(nodes=2), run(queue="team-q")
    out = []
    for n, (spec, task, status, meta) in enumerate([
        (one, Task.prepare(), None, {}),
        (one, Task.train(0, 1), RUNNING, {}),
        (one, Task.train(0, 1), UNREADY, {}),
        (one, Task.merge(0), COMPLETE, {}),
        (one, Task.eval(1), FAILED, {}),
        (one, Task.train(1, 0), FAILED, {"annotations": {ANNOTATION_STALLED: "NoProgress: no step for 600 s"}}),
        (one, Task.train(1, 0), RUNNING, {"deletionTimestamp": STAMP}),
        (multi, Task.train(0, 0), UNREADY, {}),
        (multi, Task.train(0, 1), COMPLETE, {}),
        (queued, Task.merge(1), None, {}),
    ]):  # fmt: skip
        job = job_manifest(spec, UID, task, 1 if meta else 0, WORKER)
        out.append(served(job, n, status, **meta))
    suspended = copy.deepcopy(out[1])
    suspended["spec"]["suspend"] = True
    out.append(suspended)
    for n, (spec, iteration, attempt, status) in enumerate([
        (queued, 0, 0, None),
        (queued, 0, 1, {"startTime": STAMP, "active": 2, "ready": 2, "completedIndexes": "1"}),
        (run(nodes=2, queue="team-q"), 1, 0, {"startTime": STAMP, "active": 3, "ready": 2, "completedIndexes": "0"}),
        (run(nodes=2, queue="team-q"), 1, 1, FAILED),
    ]):  # fmt: skip
        out.append(served(gang_manifest(spec, UID, iteration, attempt, WORKER), 20 + n, status))
    return out


def failed_pod(job: dict[str, Any], index: int) -> dict[str, Any]:
    return {"metadata": {"name": f"{job['metadata']['name']}-{index}", "uid": f"pod-{index}", "creationTimestamp": STAMP,
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                         "ownerReferences": [{"uid": job["metadata"]["uid"], "controller": True}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                "exitCode": 1, "message": "CUDA error", "finishedAt": STAMP}}}]}}  # fmt: skip


def readings(job: dict[str, Any]) -> dict[str, Any]:
    """What each reader of the index's Jobs gets from `job`."""
    out: dict[str, Any] = {
        "owned_by": owned_by(job, UID), "view": view(job), "is_gang": is_gang(job), "nodes_of": nodes_of(job),
        "needs_service": needs_service(job), "queue_label": queue_label(job), "job_finished": job_finished(job),
    }  # fmt: skip
    if out["needs_service"]:
        out["service_manifest"] = service_manifest(job, job["metadata"]["uid"])
    if is_gang(job):
        pods = [failed_pod(job, 0), failed_pod(job, 1)]
        out |= {"iteration_of": iteration_of(job), "attempt_of": attempt_of(job),
                "next_attempt": next_attempt([job], iteration_of(job)), "failed_tries": failed_tries(job, pods),
                "gang_views": gang_views([job], pods, 1)}  # fmt: skip
    return out


@pytest.mark.parametrize("n", range(len(jobs())))
def test_every_reader_reads_the_same_from_the_record(n: int) -> None:
    job = jobs()[n]
    assert readings(job_record(job)) == readings(job)


def test_the_cases_cover_what_the_readers_tell_apart() -> None:
    """The table above is worth something only if the readers' answers differ across it."""
    seen = [readings(j) for j in jobs()]
    assert {r["view"].state for r in seen if r["view"] is not None} == {"Pending", "Running", "Succeeded", "Failed",
                                                                       "Queued", "Suspended"}  # fmt: skip
    assert {r["needs_service"] for r in seen} == {True, False} and {r["nodes_of"] for r in seen} == {1, 2}
    assert any(r["view"] is not None and r["view"].stalled for r in seen)
    assert any(r["view"] is not None and r["view"].deleting for r in seen)
    assert any(r["view"] is not None and r["view"].unready_pods for r in seen)
    assert any(r.get("gang_views") and any(v.state == "Failed" for v in r["gang_views"]) for r in seen)


def test_read_alike_compares_a_record_with_a_whole_job_as_two_whole_jobs() -> None:
    """The index compares its record with the next version (whole, from the watch) to decide whether a pass
    could read anything new: the same answer as comparing the two whole versions."""
    cases = jobs()
    for old in cases:
        for new in cases:
            assert read_alike(job_record(old), new) == read_alike(old, new)


def test_the_index_keeps_records_and_orders_them_as_whole_jobs() -> None:
    index = JobIndex(same=read_alike, keep=job_record)
    index.seed("default", "demo", [], "1")
    job = jobs()[1]
    assert index.event("default", "demo", job, deleted=False)
    kept = index.jobs("default", "demo")
    assert kept == [job_record(job)] and "containers" not in kept[0]["spec"]["template"]["spec"]
    older = dict(job, metadata=dict(job["metadata"], resourceVersion="50"))
    assert not index.event("default", "demo", older, deleted=False)  # versions still ordered by resourceVersion
    assert not index.event("default", "demo", dict(job, metadata=dict(job["metadata"], resourceVersion="200",
                                                                       labels={**job["metadata"]["labels"], "x": "y"})),
                           deleted=False)  # a label someone else set: read alike, no pass  # fmt: skip
