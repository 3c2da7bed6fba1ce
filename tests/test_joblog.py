"""The operator's record of a run's Jobs for `kwarp report` (operator/joblog.py): bounded, idempotent, and
written only when a Job starts or ends. Against a real file store; the Jobs as the API shows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kwarp.core.plan import Task
from kwarp.operator.joblog import JobLog
from kwarp.operator.observe import JobView
from kwarp.store import FileStore, layout

FOLDER = "team-a/demo/uid-1"


def job(member: int, state: str, *, start: str | None = "2026-01-01T00:01:00Z", end: str | None = None,
        queue: str | None = "gpus", uid: str | None = None) -> JobView:  # fmt: skip
    return JobView(name=f"demo-i0-m{member}", uid=uid or f"uid-m{member}", task=Task.train(0, member), attempt=0,
                   state=state, start_time=start, completion_time=end, queue=queue,  # type: ignore[arg-type]
                   created="2026-01-01T00:00:00Z")  # fmt: skip


def stored(store: FileStore) -> list[dict[str, Any]]:
    return store.get_json(layout.jobs_json(FOLDER))["tasks"]


def test_an_entry_per_started_job_written_once_per_change(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    log = JobLog(wall=lambda: 1_767_225_900.0)
    queued = job(1, "Queued", start=None)
    log.record(store, FOLDER, [job(0, "Running"), queued])
    (m0,) = stored(store)  # the queued Job has not started: no entry yet
    assert m0 == {"task": "i0-m0", "attempt": 0, "job": "demo-i0-m0", "uid": "uid-m0", "queue": "gpus",
                  "created": 1_767_225_600.0, "start": 1_767_225_660.0, "end": None, "status": "running",
                  "admission_wait_seconds": 60.0}  # fmt: skip
    for _ in range(3):  # reconciles that see nothing new write nothing
        log.record(store, FOLDER, [job(0, "Running"), queued])
    assert log.writes == 1

    log.record(store, FOLDER, [job(0, "Succeeded", end="2026-01-01T00:05:00Z"), job(1, "Failed")])
    assert log.writes == 2
    by_task = {e["task"]: e for e in stored(store)}
    assert (by_task["i0-m0"]["status"], by_task["i0-m0"]["end"]) == ("succeeded", 1_767_225_900.0)
    # A failed Job has no completionTime: its end is when the operator saw it failed, then kept.
    assert (by_task["i0-m1"]["status"], by_task["i0-m1"]["end"]) == ("failed", 1_767_225_900.0)


def test_a_restarted_operator_rewrites_nothing_and_keeps_the_entries_of_deleted_jobs(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    JobLog(wall=lambda: 100.0).record(store, FOLDER, [job(0, "Succeeded", end="2026-01-01T00:05:00Z"),
                                                      job(1, "Failed")])  # fmt: skip
    before = stored(store)
    again = JobLog(wall=lambda: 999.0)  # another operator, later; m0's Job was deleted by its TTL since
    again.record(store, FOLDER, [job(1, "Failed")])
    assert again.writes == 0 and stored(store) == before


def test_a_job_gone_while_running_is_recorded_interrupted_and_its_successor_apart(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    log = JobLog(wall=lambda: 2_000_000_000.0)
    log.record(store, FOLDER, [job(0, "Running")])
    log.record(store, FOLDER, [])  # withdrawn from Kueue by a suspend
    log.record(store, FOLDER, [job(0, "Running", start="2026-01-01T01:00:00Z", uid="uid-m0-again")])
    entries = stored(store)
    assert [(e["uid"], e["status"], e["end"]) for e in entries] == [
        ("uid-m0", "interrupted", 2_000_000_000.0), ("uid-m0-again", "running", None)]


def test_a_job_without_a_queue_is_written_once_when_it_ends(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    log = JobLog(wall=lambda: 100.0)
    log.record(store, FOLDER, [job(0, "Running", queue=None)])
    assert log.writes == 0 and store.get_json(layout.jobs_json(FOLDER)) is None  # nothing to wait for: no PUT
    log.record(store, FOLDER, [job(0, "Succeeded", queue=None, end="2026-01-01T00:05:00Z")])
    (m0,) = stored(store)
    assert log.writes == 1 and (m0["start"], m0["status"], m0["admission_wait_seconds"]) == (
        1_767_225_660.0, "succeeded", None)
