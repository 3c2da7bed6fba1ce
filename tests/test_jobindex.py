"""The operator's index of each run's Jobs (operator/jobindex.py): fed by the Job watch, seeded by a LIST."""

from __future__ import annotations

from typing import Any

import pytest

from kwarp.operator.jobindex import JobIndex
from kwarp.operator.jobs import GANG, LABEL_ATTEMPT, LABEL_KUEUE_QUEUE, LABEL_RUN, LABEL_TASK
from kwarp.operator.observe import read_alike


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
