"""A queued run's gang Jobs seen as the plan's per-member attempts. Pure.

A queued run trains each iteration's M members as one Indexed Job (jobs.gang_manifest): pod index i is
node i % N of member i // N (N = 1: pod index m is member m; kwarp.core.placement). The plan still reasons
per member (Task.train(i, m)), so each gang Job is read as, per member:

- one view per failed try (failed_tries: a failed pod of one of its indexes, not a disruption nor a pod
  fenced out by a newer attempt, exit 75, which the Job's podFailurePolicy ignores), as a failed member Job is for an unqueued run, with what the pod said;
  a multi-node member has at most one per Job (backoffLimit 0: its first failed rank fails the Job);
- and, unless the member is over, its live state: Queued (Kueue has not admitted the gang), Pending or
  Running (admitted), Succeeded once all its indexes are in status.completedIndexes.

The gang's backoffLimit is one budget for all members (M x maxRetries: Kubernetes < 1.29 has no per-index
limit), so maxRetries per member is enforced here: a member whose failed tries across the iteration's
gang Jobs exceed it gets no live view, so the plan sees it stopped with too many failures and fails the
run with its reason. A member of a gang Job that failed (its budget spent) is stopped too: the plan
starts it again, as a new gang attempt (reconcile), and members already published skip their training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from kwarp.core.placement import member_indexes, place
from kwarp.core.plan import Task
from kwarp.store.fencing import FENCED_EXIT_CODE

from .jobs import COMPLETION_INDEX_KEY, LABEL_ATTEMPT, LABEL_ITERATION, is_gang, nodes_of, queue_label
from .observe import JobState, JobView, pod_failure, unready_pods


def parse_indexes(text: str | None) -> set[int]:
    """status.completedIndexes / failedIndexes ("1,3-5") as a set."""
    out: set[int] = set()
    for part in (text or "").split(","):
        if not part.strip():
            continue
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def iteration_of(job: Mapping[str, Any]) -> int:
    return int(job["metadata"]["labels"][LABEL_ITERATION])


def attempt_of(job: Mapping[str, Any]) -> int:
    return int(job["metadata"]["labels"].get(LABEL_ATTEMPT, "0"))


def next_attempt(jobs: Iterable[Mapping[str, Any]], iteration: int) -> int:
    """The attempt of the gang Job to create for `iteration`: 0 first (and again after a withdrawal
    deleted it: the same name queues again), else one after the latest that exists."""
    attempts = [attempt_of(j) for j in jobs if is_gang(j) and iteration_of(j) == iteration]
    return max(attempts) + 1 if attempts else 0


def _true(job: Mapping[str, Any], *types: str) -> Mapping[str, Any] | None:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") in types and c.get("status") == "True"), None)


def _disrupted(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip


def _fenced(pod: Mapping[str, Any]) -> bool:
    """A pod fenced out by a newer attempt of its member (kwarp.store.fencing): the Job's podFailurePolicy
    ignores its exit code, so it is no failed try of the member either."""
    return any(((cs.get("state") or {}).get("terminated") or {}).get("exitCode") == FENCED_EXIT_CODE
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])  # fmt: skip


def _index(pod: Mapping[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX_KEY) or (meta.get("labels") or {}).get(COMPLETION_INDEX_KEY)
    return int(value) if value is not None and str(value).isdigit() else None


def failed_pods(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    """The gang Job's failed pods per index, oldest first, without disruptions and fenced-out pods (not the
    member's fault: the Job's podFailurePolicy ignores both)."""
    uid = job["metadata"].get("uid")
    out: dict[int, list[Mapping[str, Any]]] = {}
    for pod in pods:
        refs = (pod.get("metadata") or {}).get("ownerReferences") or []
        if not any(r.get("uid") == uid for r in refs):
            continue
        if (pod.get("status") or {}).get("phase") != "Failed" or _disrupted(pod) or _fenced(pod):
            continue
        index = _index(pod)
        if index is not None:
            out.setdefault(index, []).append(pod)
    for tries in out.values():
        tries.sort(key=_failed_when)
    return out


def _failed_when(pod: Mapping[str, Any]) -> tuple[str, str, int]:
    """Order of a member's failed tries: when its container ended, when it was made, then its
    resourceVersion (its last write, the failure: timestamps have whole seconds, and a replacement pod
    can fail within the second; the API server's resourceVersions grow, as operator/jobindex.py uses)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ended = max((str(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt") or "")
                 for cs in status.get("containerStatuses") or []), default="")  # fmt: skip
    rv = str(meta.get("resourceVersion") or "")
    return ended, meta.get("creationTimestamp") or "", int(rv) if rv.isdigit() else 0


def failed_tries(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> dict[int, list[tuple[int, Mapping[str, Any]]]]:
    """Each member's failed tries in one gang Job, oldest first, as (node rank, the pod that failed).

    One-node members: each failed pod of index m is one try of member m (the Job replaced it). Multi-node
    members (N pods each, backoffLimit 0): the Job fails at its first failed pod and stops the rest, so a
    member has at most one try per Job, and when several of its ranks failed, the first one to fail stands
    for it (its peers fail because it went away: a collective or the rendezvous lost a rank)."""
    nodes = nodes_of(job)
    out: dict[int, list[tuple[int, Mapping[str, Any]]]] = {}
    for index, failed in failed_pods(job, pods).items():
        p = place(index, nodes)
        out.setdefault(p.member, []).extend((p.node_rank, pod) for pod in failed)
    for member, tries in out.items():
        tries.sort(key=lambda t: _failed_when(t[1]))
        if nodes > 1:
            out[member] = tries[:1]
    return out


def _member_done(member: int, nodes: int, completed: set[int]) -> bool:
    return all(i in completed for i in member_indexes(member, nodes))


def gang_views(jobs: Iterable[Mapping[str, Any]], pods: list[Mapping[str, Any]], max_retries: int) -> list[JobView]:
    """Per-member views of a run's gang Jobs (the others are ignored)."""
    gangs = sorted((j for j in jobs if is_gang(j)), key=lambda j: (iteration_of(j), attempt_of(j)))
    failures: dict[Task, int] = {}
    tried: list[tuple[Mapping[str, Any], dict[int, list[tuple[int, Mapping[str, Any]]]]]] = []
    for job in gangs:
        by_member = failed_tries(job, pods)
        tried.append((job, by_member))
        for member, failed in by_member.items():
            task = Task.train(iteration_of(job), member)
            failures[task] = failures.get(task, 0) + len(failed)
    out: list[JobView] = []
    for job, by_member in tried:
        meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
        iteration, attempt, nodes = iteration_of(job), attempt_of(job), nodes_of(job)
        common = dict(name=meta["name"], attempt=attempt, queue=queue_label(job), created=meta.get("creationTimestamp"),
                      deleting=bool(meta.get("deletionTimestamp")), gang=True, start_time=status.get("startTime"),
                      unready_pods=unready_pods(status))  # fmt: skip
        complete = _true(job, "Complete") is not None
        failed_job = _true(job, "Failed", "FailureTarget")
        completed = parse_indexes(status.get("completedIndexes"))
        for m in range(int(spec.get("completions") or 0) // nodes):
            task = Task.train(iteration, m)
            for rank, pod in by_member.get(m, []):
                said = pod_failure(pod) or "failed"
                where = f"member {m}" if nodes == 1 else f"member {m}, node {rank} of {nodes}"
                out.append(JobView(task=task, uid=pod["metadata"].get("uid", ""), state="Failed", failure_reason="PodFailed",
                                   failure=f"pod {pod['metadata']['name']} ({where}) {said}", pod=pod["metadata"]["name"],
                                   **common))  # type: ignore[arg-type]  # fmt: skip
            state: JobState | None
            if complete or _member_done(m, nodes, completed):
                state = "Succeeded"
            elif failed_job is not None or failures.get(task, 0) > max_retries:
                state = None  # over: the member's failed tries above say why
            elif spec.get("suspend"):
                state = "Queued" if queue_label(job) else "Suspended"
            elif status.get("active") or status.get("ready"):
                state = "Running"
            else:
                state = "Pending"
            if state is not None:
                out.append(JobView(task=task, uid=f"{meta.get('uid', '')}/{m}", state=state,
                                   completion_time=status.get("completionTime") if state == "Succeeded" else None,
                                   **common))  # type: ignore[arg-type]  # fmt: skip
    return out


def per_job(views: Iterable[JobView]) -> list[JobView]:
    """One view per Job, for what counts Jobs (Kueue admissions, Jobs waiting): a gang Job once, with its uid."""
    out: list[JobView] = []
    seen: set[str] = set()
    for v in views:
        if not v.gang:
            out.append(v)
        elif v.pod is None and v.name not in seen:
            seen.add(v.name)
            out.append(replace(v, uid=v.uid.rsplit("/", 1)[0]))
    return out
