"""A queued run's gang Jobs read as per-member attempts (operator/gang.py), table-driven over Job and pod dicts."""

from __future__ import annotations

from typing import Any

import pytest

from kwarp.core.plan import Task
from kwarp.operator.gang import gang_views, next_attempt, parse_indexes
from kwarp.operator.observe import by_task, task_jobs

QUEUE = "kueue.x-k8s.io/queue-name"


def gang(iteration: int = 0, attempt: int = 0, *, members: int = 3, suspend: bool = False, active: int = 0,
         completed: str = "", condition: str | None = None, deleting: bool = False, nodes: int = 1) -> dict[str, Any]:  # fmt: skip
    name = f"demo-i{iteration}-members" + (f"-r{attempt}" if attempt else "")
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "creationTimestamp": "2026-01-01T00:00:00Z",
                            "labels": {"kwarp.dev/task": f"i{iteration}-members", "kwarp.dev/iteration": str(iteration),
                                       "kwarp.dev/attempt": str(attempt), QUEUE: "team-a"}}  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    status: dict[str, Any] = {"active": active or None, "completedIndexes": completed or None}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]
    spec: dict[str, Any] = {"completions": members * nodes, "parallelism": members * nodes, "suspend": suspend,
                            "completionMode": "Indexed"}  # fmt: skip
    if nodes > 1:  # what gang_manifest gives the pods of multi-node members: torchrun's node count
        spec["template"] = {"spec": {"containers": [{"name": "trainer", "env": [{"name": "PET_NNODES", "value": str(nodes)}]}]}}
    return {"metadata": meta, "spec": spec, "status": status}


def pod(job: dict[str, Any], index: int, n: int, *, phase: str = "Failed", disrupted: bool = False,
        exit_code: int = 137) -> dict[str, Any]:  # fmt: skip
    name = f"{job['metadata']['name']}-{index}-{n}"
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": exit_code, "reason": "Error", "message": f"killed {n}"}}}]}  # fmt: skip
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": f"2026-01-01T00:0{n}:00Z",
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                         "ownerReferences": [{"uid": job["metadata"]["uid"], "controller": True}]}, "status": status}  # fmt: skip


@pytest.mark.parametrize(("text", "want"), [("", set()), (None, set()), ("1", {1}), ("0,2-4", {0, 2, 3, 4}), ("0-1,5", {0, 1, 5})])
def test_completed_indexes(text: str | None, want: set[int]) -> None:
    assert parse_indexes(text) == want


def test_next_attempt_follows_the_latest_gang_job_of_the_iteration() -> None:
    assert next_attempt([], 0) == 0
    assert next_attempt([gang(0, 0), gang(1, 0)], 0) == 1
    assert next_attempt([gang(0, 0), gang(0, 2, condition="Failed"), gang(1, 0)], 0) == 3


def states(views: list) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for task, atts in by_task(views).items():
        out[task.member] = [v.state for v in atts]
    return out


RUNNING = gang(active=2, completed="0")
CASES = [
    pytest.param([gang(suspend=True)], [], 1, {0: ["Queued"], 1: ["Queued"], 2: ["Queued"]}, id="queued"),
    pytest.param([gang(suspend=True, deleting=True)], [], 1, {0: ["Queued"], 1: ["Queued"], 2: ["Queued"]}, id="withdrawing"),
    pytest.param([gang()], [], 1, {0: ["Pending"], 1: ["Pending"], 2: ["Pending"]}, id="admitted-no-pod-yet"),
    pytest.param([RUNNING], [], 1, {0: ["Succeeded"], 1: ["Running"], 2: ["Running"]}, id="one-index-done"),
    # A killed pod is one failed try; a disruption (evicted, preempted) is none.
    pytest.param([RUNNING], [pod(RUNNING, 1, 1), pod(RUNNING, 2, 1, disrupted=True)], 1,
                 {0: ["Succeeded"], 1: ["Failed", "Running"], 2: ["Running"]}, id="a-pod-failed"),
    # A pod fenced out by a newer attempt of its member (exit 75, kwarp.store.fencing) is no failed try either:
    # with maxRetries 0 the member goes on running.
    pytest.param([RUNNING], [pod(RUNNING, 1, 1, exit_code=75), pod(RUNNING, 2, 1, exit_code=75)], 0,
                 {0: ["Succeeded"], 1: ["Running"], 2: ["Running"]}, id="a-pod-fenced-out"),
    # Past maxRetries (1): no live view, the plan sees the member stopped with 2 failures.
    pytest.param([RUNNING], [pod(RUNNING, 1, 1), pod(RUNNING, 1, 2)], 1,
                 {0: ["Succeeded"], 1: ["Failed", "Failed"], 2: ["Running"]}, id="member-past-max-retries"),
    # The Job failed: unfinished members are stopped (a member without failures of its own has no view).
    pytest.param([gang(completed="0", condition="Failed")], [], 1, {0: ["Succeeded"]}, id="gang-failed"),
    # Failures add up across the iteration's gang Jobs.
    pytest.param([gang(0, 0, condition="Failed"), gang(0, 1, active=3)],
                 [pod(gang(0, 0), 2, 1), pod(gang(0, 1), 2, 2)], 1,
                 {0: ["Running"], 1: ["Running"], 2: ["Failed", "Failed"]}, id="across-attempts"),
]


@pytest.mark.parametrize(("jobs", "pods", "max_retries", "want"), CASES)
def test_gang_views(jobs: list, pods: list, max_retries: int, want: dict[int, list[str]]) -> None:
    views = gang_views(jobs, pods, max_retries)
    assert states(views) == want
    assert all(v.gang and v.task.kind == "train" for v in views)


def test_the_plan_sees_failed_tries_with_what_the_pod_said() -> None:
    views = gang_views([RUNNING], [pod(RUNNING, 1, 1), pod(RUNNING, 1, 2)], 1)
    jobs = task_jobs(by_task(views), frozenset({Task.train(0, 0)}))
    assert jobs[Task.train(0, 1)].failures == 2 and not jobs[Task.train(0, 1)].active
    assert jobs[Task.train(0, 1)].last_failure == (
        "Job demo-i0-members pod demo-i0-members-1-2 (member 1) container trainer exited with code 137 (Error): killed 2")
    assert jobs[Task.train(0, 2)].active and jobs[Task.train(0, 2)].failures == 0
    assert {v.uid for v in views if v.state == "Failed"} == {"uid-demo-i0-members-1-1", "uid-demo-i0-members-1-2"}


def test_the_latest_failed_try_is_the_last_written_when_timestamps_tie() -> None:
    """Two tries of a member failing within one second (timestamps have whole seconds): the one the API
    server wrote last (higher resourceVersion) is the latest, whatever the pods' names."""
    first, second = pod(RUNNING, 1, 1), pod(RUNNING, 1, 1)
    first["metadata"].update(name="demo-i0-members-1-zzzzz", uid="uid-first", resourceVersion="41")
    second["metadata"].update(name="demo-i0-members-1-aaaaa", uid="uid-second", resourceVersion="107")
    second["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = "CUDA error: out of memory"
    for pods in ([first, second], [second, first]):
        views = [v for v in gang_views([RUNNING], pods, 5) if v.task == Task.train(0, 1)]
        assert [v.uid for v in views] == ["uid-first", "uid-second", f"{RUNNING['metadata']['uid']}/1"]
        assert task_jobs(by_task(views), frozenset())[Task.train(0, 1)].last_failure.endswith("CUDA error: out of memory")


# ------------------------------------------------------------------------------ members of N = 2 nodes each
# M = 2, N = 2: pods 0, 1 are member 0 (node ranks 0, 1), pods 2, 3 member 1; backoffLimit 0.
TWO = gang(members=2, nodes=2, active=4)
NODE_CASES = [
    pytest.param([gang(members=2, nodes=2, suspend=True)], [], 1, {0: ["Queued"], 1: ["Queued"]}, id="queued-whole"),
    pytest.param([TWO], [], 1, {0: ["Running"], 1: ["Running"]}, id="running"),
    # One rank of member 0 done, the other still running: the member is not done.
    pytest.param([gang(members=2, nodes=2, active=3, completed="0")], [], 1, {0: ["Running"], 1: ["Running"]},
                 id="one-rank-done"),
    # Both ranks of member 1 done: member 1 is.
    pytest.param([gang(members=2, nodes=2, active=2, completed="2-3")], [], 1, {0: ["Running"], 1: ["Succeeded"]},
                 id="both-ranks-done"),
    # Node rank 1 of member 1 (pod 3) failed: one failed try of member 1, none of member 0.
    pytest.param([TWO], [pod(TWO, 3, 1)], 1, {0: ["Running"], 1: ["Failed", "Running"]}, id="one-rank-failed"),
    # Both ranks of member 0 failed (the second because its peer went away): still one try.
    pytest.param([gang(members=2, nodes=2, condition="Failed")], [pod(TWO, 1, 1), pod(TWO, 0, 2)], 1,
                 {0: ["Failed"]}, id="both-ranks-failed-one-try"),
    # The next gang attempt: member 0's second try is past maxRetries 1, member 1 runs on.
    pytest.param([gang(0, 0, members=2, nodes=2, condition="Failed"), gang(0, 1, members=2, nodes=2, active=4)],
                 [pod(gang(0, 0, nodes=2), 1, 1), pod(gang(0, 1, nodes=2), 0, 2)], 1,
                 {0: ["Failed", "Failed"], 1: ["Running"]}, id="across-attempts-past-max-retries"),
]


@pytest.mark.parametrize(("jobs", "pods", "max_retries", "want"), NODE_CASES)
def test_gang_views_of_multi_node_members(jobs: list, pods: list, max_retries: int, want: dict[int, list[str]]) -> None:
    views = gang_views(jobs, pods, max_retries)
    assert states(views) == want
    assert all(v.gang and v.task.kind == "train" for v in views)


def test_a_failed_rank_is_its_members_try_named_with_its_node() -> None:
    failed = gang(members=2, nodes=2, condition="Failed", completed="2-3")
    views = gang_views([failed], [pod(TWO, 1, 1), pod(TWO, 0, 2)], 3)
    jobs = task_jobs(by_task(views), frozenset({Task.train(0, 1)}))
    assert jobs[Task.train(0, 0)].failures == 1 and not jobs[Task.train(0, 0)].active
    # The rank that failed first stands for the try: its peer failed because it went away.
    assert jobs[Task.train(0, 0)].last_failure == (
        "Job demo-i0-members pod demo-i0-members-1-1 (member 0, node 1 of 2) container trainer exited with code 137 "
        "(Error): killed 1")
    assert [v.state for v in views if v.task == Task.train(0, 1)] == ["Succeeded"]
