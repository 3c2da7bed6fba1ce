"""The operator's index of each run's Jobs (operator/jobindex.py): fed by the Job watch, seeded by a LIST."""

from __future__ import annotations

from typing import Any

from kwarp.operator.jobindex import JobIndex


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
