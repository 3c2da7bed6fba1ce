"""The operator's index of each run's Jobs (operator/jobindex.py): fed by the Job watch, seeded by a LIST."""

from __future__ import annotations

from typing import Any

import pytest

from kwarp.operator.jobindex import JobIndex
from kwarp.operator.jobs import GANG, LABEL_ATTEMPT, LABEL_KUEUE_QUEUE, LABEL_RUN, LABEL_TASK
from kwarp.operator.observe import read_alike, view


def job(name: str, rv: int, uid: str | None = None, state: str = "v") -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid or f"uid-{name}", "resourceVersion": str(rv)}, "state": state}


def names(index: JobIndex) -> dict[str, str] | None:
    jobs = index.jobs("ns", "r")
    return None if jobs is None else {j["metadata"]["name"]: j["state"] for j in jobs}


def test_unseeded_runs_have_no_answer_so_the_reconcile_lists() -> None:
    index = JobIndex()
    index.event("ns", "r", job("r-prepare", 5), deleted=False)
    assert names(index) is None
    index.seed("ns", "r", [job("r-prepare", 5)], "5")
    assert names(index) == {"r-prepare": "v"}


def test_newer_versions_win_whichever_arrives_first() -> None:
    index = JobIndex()
    index.event("ns", "r", job("a", 7, state="running"), deleted=False)
    index.seed("ns", "r", [job("a", 6, state="pending")], "6")  # a LIST served before the event's change
    assert names(index) == {"a": "running"}
    index.event("ns", "r", job("a", 6, state="pending"), deleted=False)  # a late, older event
    assert names(index) == {"a": "running"}
    index.event("ns", "r", job("a", 9, state="done"), deleted=False)
    assert names(index) == {"a": "done"}


def test_a_deleted_job_is_not_brought_back_by_an_older_list_or_event() -> None:
    index = JobIndex()
    index.seed("ns", "r", [job("a", 3), job("b", 4)], "4")
    index.event("ns", "r", job("a", 8), deleted=True)
    assert names(index) == {"b": "v"}
    index.seed("ns", "r", [job("a", 3), job("b", 4)], "5")  # LIST served before the deletion
    index.event("ns", "r", job("a", 3), deleted=False)
    assert names(index) == {"b": "v"}
    index.event("ns", "r", job("a", 10, uid="uid-a2", state="new"), deleted=False)  # recreated: another uid
    assert names(index) == {"a": "new", "b": "v"}


def test_a_list_drops_what_it_lacks_unless_an_event_showed_it_after_the_list() -> None:
    index = JobIndex()
    index.seed("ns", "r", [job("gone", 2)], "2")
    index.event("ns", "r", job("new", 12), deleted=False)  # created after the next LIST is served
    index.stale("ns", "r")
    assert names(index) is None  # the resync timer: the next reconcile LISTs
    index.seed("ns", "r", [], "10")  # "gone" was deleted while the watch was away
    assert names(index) == {"new": "v"}


def test_forget_drops_a_run() -> None:
    index = JobIndex()
    index.seed("ns", "r", [job("a", 1)], "1")
    index.forget("ns", "r")
    assert names(index) is None


def task_job(rv: int, *, status: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
             task: str = "i0-m0", owner: str = "run-uid", suspend: bool = False) -> dict[str, Any]:
    """A kwarp task Job as the watch shows it."""
    return {"metadata": {"name": f"r-{task}", "uid": "uid-job", "resourceVersion": str(rv),
                         "labels": {LABEL_RUN: "r", LABEL_TASK: task, LABEL_ATTEMPT: "0", **(labels or {})},
                         "ownerReferences": [{"kind": "WarpRun", "uid": owner, "controller": True}]},
            "spec": {"suspend": suspend}, "status": status or {}}  # fmt: skip


RUNNING = {"startTime": "2026-01-01T00:00:00Z", "active": 1, "ready": 1}
FAILED = {"startTime": "2026-01-01T00:00:00Z", "failed": 1,
          "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}  # fmt: skip
COMPLETE = {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z", "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip


@pytest.mark.parametrize(("cached", "event", "news"), [
    (None, task_job(5), True),  # first sight
    (task_job(5), task_job(5), False),  # the ADDED event of a Job the creating pass put here
    (task_job(5), task_job(6, labels={"touched": "yes"}), False),  # a label of someone else's
    (task_job(5, status=RUNNING), task_job(6, status={**RUNNING, "ready": 1, "terminating": 0}), False),
    (task_job(5), task_job(6, status=RUNNING), True),  # started
    (task_job(6, status=RUNNING), task_job(7, status=COMPLETE), True),  # finished
    (task_job(6, status=RUNNING), task_job(5), False),  # older than the cached version
    (task_job(5), task_job(6, owner="another-run"), True),  # owners changed
    (task_job(5, suspend=True), task_job(6, suspend=False), True),  # resumed
    (task_job(5, suspend=True, labels={LABEL_KUEUE_QUEUE: "q"}),  # waiting for Kueue: every pass counts it
     task_job(6, suspend=True, labels={LABEL_KUEUE_QUEUE: "q", "touched": "yes"}), True),
    (task_job(5, task=f"i0-{GANG}"), task_job(6, task=f"i0-{GANG}"), True),  # a gang's members are its pods
    # A merge, an eval, the prepare Job: their start is read by no pass (observe.as_read) ...
    (task_job(5, task="i0-merge"), task_job(6, task="i0-merge", status=RUNNING), False),
    (task_job(5, task="prepare"), task_job(6, task="prepare", status=RUNNING), False),
    (task_job(5, task="i0-eval"), task_job(6, task="i0-eval", status=RUNNING), False),
    # ... but a pod not ready is (PodsStuck), and so is the pod becoming ready (PodsStuck cleared) ...
    (task_job(5, task="i0-merge"), task_job(6, task="i0-merge", status={**RUNNING, "ready": 0}), True),
    (task_job(5, task="i0-merge", status={**RUNNING, "ready": 0}), task_job(6, task="i0-merge", status=RUNNING),
     True),
    # ... and its end, a suspend, and a Kueue admission (jobs.json and the admission metrics record it).
    (task_job(6, task="i0-merge", status=RUNNING), task_job(7, task="i0-merge", status=COMPLETE), True),
    (task_job(6, task="i0-merge", status=RUNNING), task_job(7, task="i0-merge", status=FAILED), True),
    (task_job(6, task="i0-merge", status=RUNNING), task_job(7, task="i0-merge", status=RUNNING, suspend=True), True),
    (task_job(5, task="i0-merge", suspend=True, labels={LABEL_KUEUE_QUEUE: "q"}),
     task_job(6, task="i0-merge", status=RUNNING, labels={LABEL_KUEUE_QUEUE: "q"}), True),
    (task_job(5, task="i0-merge", labels={LABEL_KUEUE_QUEUE: "q"}),
     task_job(6, task="i0-merge", status=RUNNING, labels={LABEL_KUEUE_QUEUE: "q"}), True),
])  # fmt: skip
def test_an_event_says_whether_a_reconcile_could_read_anything_new(cached: Any, event: Any, news: bool) -> None:
    index = JobIndex(same=read_alike)
    if cached is not None:
        index.event("ns", "r", cached, deleted=False)
    assert index.event("ns", "r", event, deleted=False) is news


def test_deletions_are_news_and_later_events_about_the_deleted_job_are_not() -> None:
    index = JobIndex(same=read_alike)
    index.event("ns", "r", task_job(5), deleted=False)
    assert index.event("ns", "r", task_job(6), deleted=True) is True
    assert index.event("ns", "r", task_job(7, status=RUNNING), deleted=False) is False


def test_without_a_comparison_every_newer_version_is_news() -> None:
    index = JobIndex()
    index.event("ns", "r", task_job(5), deleted=False)
    assert index.event("ns", "r", task_job(5), deleted=False) is True


def passes_for_a_run(same: Any) -> int:
    """The passes the Job events of one run queue (I = 1, M = 2, each Job created by a pass, started and
    completed in one status write each, as the benchmark's Job controller writes them): each event that
    `event` calls news queues one."""
    index = JobIndex(same=same)
    passes = 0
    for n, task in enumerate(["prepare", "i0-m0", "i0-m1", "i0-merge", "i0-eval"]):
        created = task_job(10 * n, task=task)
        index.event("ns", "r", created, deleted=False)  # the creating pass put the POST's answer here
        for event in [created, task_job(10 * n + 1, task=task, status=RUNNING),
                      task_job(10 * n + 2, task=task, status=COMPLETE)]:  # fmt: skip
            passes += index.event("ns", "r", event, deleted=False)
    return passes


def test_the_starts_of_jobs_other_than_members_queue_no_pass() -> None:
    """Of the 5 Jobs' 15 events, the passes come from the members' starts and every Job's end: 7, where a
    comparison of the attempts' views alone (the rule before as_read) queues one for every start too: 10."""
    assert passes_for_a_run(lambda old, new: False) == 15
    assert passes_for_a_run(lambda old, new: view(old) == view(new)) == 10
    assert passes_for_a_run(read_alike) == 7


def test_a_job_its_creating_pass_put_here_does_not_move_the_run_s_version() -> None:
    """The POST's answer (accounted for by the pass that created the Job) leaves the version where that pass
    read it; the watch's ADDED event of that version is no news; one waiting in Kueue's queue is (every pass
    counts it in the admission metrics), and so is the Job's start."""
    index = JobIndex(same=read_alike)
    index.seed("ns", "r", [], "1")
    before = index.version("ns", "r")
    assert index.event("ns", "r", task_job(5), deleted=False, accounted=True)
    assert not index.event("ns", "r", task_job(5), deleted=False)
    assert index.version("ns", "r") == before
    assert index.event("ns", "r", task_job(6, status=RUNNING), deleted=False)
    assert index.version("ns", "r") != before
    queued = JobIndex(same=read_alike)
    queued.seed("ns", "r", [], "1")
    before = queued.version("ns", "r")
    waiting = task_job(5, suspend=True, labels={LABEL_KUEUE_QUEUE: "q"})
    assert queued.event("ns", "r", waiting, deleted=False, accounted=True)
    assert queued.event("ns", "r", waiting, deleted=False)
    assert queued.version("ns", "r") != before


def test_the_watch_s_first_sight_of_a_job_being_created_moves_no_version() -> None:
    """The ADDED event often overtakes the POST's answer; the pass that POSTed accounts for that Job. But a Job
    the pass did not get back (409: someone else's; a failed POST), a first sight with a status already, and a
    Job waiting in Kueue's queue are news as before."""
    index = JobIndex(same=read_alike)
    index.seed("ns", "r", [], "1")
    before = index.version("ns", "r")
    index.creating("ns", "r", "r-i0-m0")
    assert index.event("ns", "r", task_job(5), deleted=False)  # queues a pass, as before
    assert index.version("ns", "r") == before
    assert not index.event("ns", "r", task_job(5), deleted=False, accounted=True)  # the POST's answer
    index.creating("ns", "r", "r-i0-m0", done=True, accounted=True)
    assert index.version("ns", "r") == before
    for start, finish in [(task_job(5), False), (task_job(5, status=RUNNING), True),
                          (task_job(5, suspend=True, labels={LABEL_KUEUE_QUEUE: "q"}), True)]:  # fmt: skip
        index = JobIndex(same=read_alike)
        index.seed("ns", "r", [], "1")
        before = index.version("ns", "r")
        index.creating("ns", "r", "r-i0-m0")
        assert index.event("ns", "r", start, deleted=False)
        if not finish:  # the POST answered 409 or failed: the pass did not account for the Job
            index.creating("ns", "r", "r-i0-m0", done=True, accounted=False)
        assert index.version("ns", "r") != before
