"""From the Jobs of a run (plain dicts from the API) to what the plan needs: `TaskJobs` per task. Pure.

A Job is one attempt of one task (labels kwarp.dev/task and kwarp.dev/attempt). Its state comes from
its conditions (Complete / Failed, FailureTarget as soon as the controller decided) and `spec.suspend`.
A Job that completed while the store lacks its task's outputs counts as a failed attempt: otherwise
the plan would want to start an attempt whose Job already exists, and the run would stall.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from kwarp.core.plan import Task, TaskJobs

from .jobs import ANNOTATION_STALLED, LABEL_ATTEMPT, LABEL_TASK, is_gang, queue_label

# Queued: a Kueue workload not admitted yet (or evicted by Kueue and back in its queue). Kueue alone
# unsuspends it, so the plan sees it active but not paused: it is never resumed by the operator.
JobState = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
ACTIVE_STATES = ("Pending", "Queued", "Running", "Suspended")
OUTPUTS_MISSING = "OutputsMissing"
_MESSAGE_LIMIT = 600


@dataclass(frozen=True)
class JobView:
    name: str
    uid: str
    task: Task
    attempt: int
    state: JobState
    start_time: str | None = None
    completion_time: str | None = None
    failure_reason: str | None = None  # short, for metrics: BackoffLimitExceeded, DeadlineExceeded, ...
    failure: str | None = None  # for people: reason and message of the Job's condition
    queue: str | None = None  # the Kueue LocalQueue it was submitted to; None: not a Kueue workload
    created: str | None = None  # metadata.creationTimestamp (admission wait = startTime - created)
    deleting: bool = False  # deletionTimestamp set: going away (suspend of a Kueue workload deletes it)
    stalled: str | None = None  # why the operator failed it for making no progress (its annotation)
    gang: bool = False  # one member of an iteration's gang Job (operator/gang.py): `name` is the gang's
    pod: str | None = None  # a gang member's failed pod, standing for one failed try (its text in `failure`)
    # Some active pod is not ready (status.ready < status.active, or no `ready` count): only such a Job can
    # have a pod waiting for an image or a Secret, so only then are its pods worth a LIST.
    unready_pods: bool = False


@dataclass(frozen=True)
class Failures:
    """Failed attempts of a task as recorded in the status: Jobs can be gone (TTL, manual deletion)."""

    count: int
    reason: str = ""


def _true(conditions: Iterable[Mapping[str, Any]], *types: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") in types and c.get("status") == "True"), None)


def owned_by(job: Mapping[str, Any], uid: str) -> bool:
    """A run's Jobs carry its uid: a Job left by an earlier run of the same name is not one of them."""
    refs = job.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def read_alike(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a reconcile reads the same from two versions of a Job: the attempt `view` makes of it and its
    owners. A label or annotation of someone else's, a new resourceVersion, pod counts that change no state:
    another pass would find nothing to do. A gang Job's members are its pods: never alike. Nor is a Job that
    waits in Kueue's queue: the passes that see it count it in the admission metrics."""
    if is_gang(new) or is_gang(old):
        return False
    owners = [((j.get("metadata") or {}).get("ownerReferences") or []) for j in (old, new)]
    a, b = view(old), view(new)
    return (a is not None and b is not None and a.state != "Queued" and as_read(a) == as_read(b)
            and owners[0] == owners[1])  # fmt: skip


def as_read(v: JobView) -> JobView:
    """What a pass reads of an attempt. A started Job of a task other than a member's training, outside Kueue,
    reads as one not started: the plan and a suspend act on active Jobs alike, the status shows the running
    state of members only, the watchdog fails trainers only, jobs.json records such a Job at its end and
    admissions are Kueue's. So its start (Pending -> Running, startTime set) brings a pass nothing to do; its
    pods' readiness (PodsStuck), its end, its deletion still do."""
    if v.state == "Running" and v.task.kind != "train" and v.queue is None and not v.gang:
        return replace(v, state="Pending", start_time=None)
    return v


def unready_pods(status: Mapping[str, Any]) -> bool:
    """A Job status with an active pod that is not ready (or no `ready` count to tell)."""
    active, ready = status.get("active"), status.get("ready")
    return bool(active) and (ready is None or ready < active)


def view(job: Mapping[str, Any]) -> JobView | None:
    """The attempt a Job stands for, or None if it is not a kwarp task Job."""
    meta = job.get("metadata", {})
    labels = meta.get("labels") or {}
    try:
        task = Task.parse_id(labels[LABEL_TASK])
        attempt = int(labels.get(LABEL_ATTEMPT, "0"))
    except (KeyError, ValueError):
        return None
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    stalled = (meta.get("annotations") or {}).get(ANNOTATION_STALLED)
    state: JobState
    failure_reason = failure = None
    if _true(conditions, "Complete"):
        state = "Succeeded"
    elif (c := _true(conditions, "Failed", "FailureTarget")) is not None:
        state = "Failed"
        failure_reason = c.get("reason") or "Failed"
        failure = f"{c.get('reason') or 'Failed'}: {c.get('message') or 'no message'}"
        if stalled:  # the deadline that failed it was the watchdog's: its reason is the one to quote
            failure_reason, failure = stalled.split(":", 1)[0], stalled
    elif (job.get("spec") or {}).get("suspend"):
        state = "Queued" if queue_label(job) else "Suspended"
    elif status.get("active") or status.get("ready"):
        state = "Running"
    else:
        state = "Pending"
    return JobView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        task=task,
        attempt=attempt,
        state=state,
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        failure_reason=failure_reason,
        failure=failure,
        queue=queue_label(job),
        created=meta.get("creationTimestamp"),
        deleting=bool(meta.get("deletionTimestamp")),
        stalled=stalled,
        unready_pods=unready_pods(status),
    )


def pod_failure(pod: Mapping[str, Any]) -> str | None:
    """What a failed pod's container said: exit code, reason and the last line of its message; for a
    pod the kubelet evicted (a full scratch emptyDir, ephemeral-storage over its limit), the kubelet's words."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        name = (pod.get("metadata") or {}).get("name", "")
        return f"pod {name} evicted by the kubelet: {(status.get('message') or 'no message').strip()}"
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            text = f"container {cs.get('name')} exited with code {terminated.get('exitCode')}"
            if terminated.get("reason"):
                text += f" ({terminated['reason']})"
            lines = [ln for ln in (terminated.get("message") or "").strip().splitlines() if ln.strip()]
            if lines:
                text += f": {lines[-1].strip()}"
            return text
    return None


def failure_message(job: JobView, pod_detail: str | None) -> str:
    text = f"Job {job.name} {job.failure or 'failed'}"
    if pod_detail:
        text += f"; {pod_detail}"
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def by_task(views: Iterable[JobView]) -> dict[Task, list[JobView]]:
    """Attempts per task, oldest first."""
    out: dict[Task, list[JobView]] = {}
    for v in sorted(views, key=lambda v: (v.task, v.attempt)):
        out.setdefault(v.task, []).append(v)
    return out


def attempt_failed(job: JobView, done: frozenset[Task]) -> bool:
    return job.state == "Failed" or (job.state == "Succeeded" and job.task not in done)


def task_jobs(
    attempts: Mapping[Task, list[JobView]],
    done: frozenset[Task],
    *,
    messages: Mapping[str, str] | None = None,
    recorded: Mapping[Task, Failures] | None = None,
) -> dict[Task, TaskJobs]:
    """The plan's view of each task's Jobs. `messages` maps a failed Job's name to its failure text
    (with the pod's details); `recorded` are failure counts kept in the status (they only grow)."""
    messages = messages or {}
    recorded = recorded or {}
    out: dict[Task, TaskJobs] = {}
    for task in set(attempts) | set(recorded):
        jobs = attempts.get(task, [])
        active = next((j for j in reversed(jobs) if j.state in ACTIVE_STATES), None)
        failed = [j for j in jobs if attempt_failed(j, done)]
        last = None
        if failed:
            j = failed[-1]
            last = messages.get(j.name) or (
                f"Job {j.name} completed, but the task's outputs are not complete in the store"
                if j.state == "Succeeded"
                else failure_message(j, None)
            )
        rec = recorded.get(task)
        count = len(failed)
        if rec is not None and rec.count > count:
            count, last = rec.count, last or rec.reason
        out[task] = TaskJobs(
            active=active is not None,
            suspended=active is not None and active.state == "Suspended",
            failures=count,
            last_failure=last,
        )
    return out


def failure_reason_code(job: JobView, done: frozenset[Task]) -> str:
    """Low-cardinality reason of a failed attempt, for the failures metric."""
    if job.state == "Succeeded" and job.task not in done:
        return OUTPUTS_MISSING
    return job.failure_reason or "Failed"
