"""Queued passes that would read what the last pass read are skipped (operator/passes.py); every wake-up that
can bring something new still runs a pass: news about a Job, a change of the WarpRun, a failed pass's retry,
the resync timer (time, the store), the WarpRun handlers."""

from __future__ import annotations

from typing import Any

import pytest

from kwarp.operator.jobindex import JobIndex
from kwarp.operator.jobs import WorkerSettings
from kwarp.operator.observe import read_alike
from kwarp.operator.passes import PassLedger, own_write
from kwarp.operator.reconcile import Outcome, Reconciler
from kwarp.operator.runcache import RunCache

KEY = ("ns", "r")


def run(rv: int, *, spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
        status: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {"metadata": {"name": "r", "namespace": "ns", "uid": "run-uid", "resourceVersion": str(rv),
                         "generation": 1, "labels": labels or {}},
            "spec": spec or {"iterations": 2}, "status": status or {}}  # fmt: skip


def job(rv: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "r-prepare", "uid": "uid-job", "resourceVersion": str(rv),
                         "labels": {"kwarp.dev/run": "r", "kwarp.dev/task": "prepare", "kwarp.dev/attempt": "0"},
                         "ownerReferences": [{"kind": "WarpRun", "uid": "run-uid", "controller": True}]},
            "spec": {}, "status": status or {}}  # fmt: skip


COMPLETE = {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z", "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip


class Listing:
    """The API server's answer to a pass's LIST of the run's Jobs (after a resync)."""

    def list_jobs_at(self, namespace: str, name: str) -> tuple[list[dict[str, Any]], str]:
        return [job(5)], "5"


class Scripted(Reconciler):
    """A reconciler whose pass only counts itself and, like a pass that changed the status, writes the run
    (the answer goes into the run cache, as `_report` puts it there)."""

    def __init__(self) -> None:
        super().__init__(kube=Listing(), worker=WorkerSettings(image="x"), job_index=JobIndex(same=read_alike),  # type: ignore[arg-type]
                         runs=RunCache())  # fmt: skip
        self.passes_run = 0
        self.write: dict[str, Any] | None = None  # the run as this pass's status write leaves it
        self.fail = False
        self.create: dict[str, Any] | None = None  # a Job this pass creates (its POST's answer)
        self.before_read: dict[str, Any] | None = None

    def reconcile(self, namespace: str, name: str) -> Outcome | None:
        self.passes_run += 1
        if self.before_read is not None:  # a Job event while the pass parses the run, before it reads the Jobs
            assert self.job_index.event(namespace, name, self.before_read, deleted=False)  # type: ignore[union-attr]
            self.before_read = None
        self._run_jobs(namespace, name)
        if self.fail:
            raise RuntimeError("the API server answered 500")
        outcome = Outcome()
        if self.create is not None:
            self.job_index.event(namespace, name, self.create, deleted=False, accounted=True)  # type: ignore[union-attr]
            self.create = None
        if self.write is not None:
            read = self.runs.get(namespace, name)  # type: ignore[union-attr]
            self.runs.put(self.write)  # type: ignore[union-attr]
            if read is not None and own_write(read, self.write):
                outcome.written = self.write["metadata"]["resourceVersion"]
            self.write = None
        return outcome


@pytest.fixture
def rec() -> Scripted:
    r = Scripted()
    r.runs.put(run(10))  # type: ignore[union-attr]
    r.job_index.seed("ns", "r", [job(5)], "5")  # type: ignore[union-attr]
    r._process(KEY)  # the first pass: nothing to compare with, it runs
    assert r.passes_run == 1
    return r


def test_a_pass_queued_by_what_the_last_pass_read_is_skipped(rec: Scripted) -> None:
    rec._process(KEY)
    assert (rec.passes_run, rec.passes.skipped) == (1, 1)


def test_a_pass_after_the_last_pass_s_own_status_write_is_skipped(rec: Scripted) -> None:
    """The work queue's "one more pass" (an event the last pass read arrived while it ran) over the run as
    the last pass wrote it: the instrumented benchmark's 42 of 328 passes."""
    assert rec.job_index.event("ns", "r", job(6, COMPLETE), deleted=False)  # type: ignore[union-attr]
    rec.write = run(11, status={"phase": "Training"})
    rec._process(KEY)  # reads the completion, writes the status
    rec._process(KEY)  # queued by the completion's handler after that pass had read it
    assert (rec.passes_run, rec.passes.skipped) == (2, 1)


def test_a_pass_after_one_that_created_a_job_is_skipped(rec: Scripted) -> None:
    """The creating pass puts the POST's answer into the index (`accounted`): that moves no version, and the
    watch's ADDED event of the same version is no news."""
    assert rec.job_index.event("ns", "r", job(6, COMPLETE), deleted=False)  # type: ignore[union-attr]
    created = {**job(7), "metadata": {**job(7)["metadata"], "name": "r-i0-m0", "uid": "uid-m0"}}
    created["metadata"]["labels"] = {**created["metadata"]["labels"], "kwarp.dev/task": "i0-m0"}
    rec.create = created
    rec._process(KEY)  # reads the completion, creates the next Job
    assert not rec.job_index.event("ns", "r", created, deleted=False)  # type: ignore[union-attr]
    rec._process(KEY)  # queued by an event that pass had read
    assert (rec.passes_run, rec.passes.skipped) == (2, 1)


def test_a_job_event_the_pass_read_after_it_started_queues_no_second_pass(rec: Scripted) -> None:
    """The pass records the version it read the Jobs at, not the one before it parsed the run."""
    assert rec.job_index.event("ns", "r", job(6, COMPLETE), deleted=False)  # type: ignore[union-attr]
    rec.before_read = job(7, COMPLETE)
    rec.before_read["metadata"]["labels"] = {**rec.before_read["metadata"]["labels"], "kwarp.dev/task": "i0-m0"}
    rec.before_read["metadata"]["name"] = "r-i0-m0"
    rec._process(KEY)
    rec._process(KEY)  # queued by that event's handler
    assert (rec.passes_run, rec.passes.skipped) == (2, 1)


def test_news_about_a_job_runs_a_pass(rec: Scripted) -> None:
    assert rec.job_index.event("ns", "r", job(6, COMPLETE), deleted=False)  # type: ignore[union-attr]
    rec._process(KEY)
    assert rec.job_index.event("ns", "r", job(7, COMPLETE), deleted=True)  # type: ignore[union-attr]
    rec._process(KEY)
    assert (rec.passes_run, rec.passes.skipped) == (3, 0)


def test_a_job_event_that_is_no_news_does_not_move_the_version(rec: Scripted) -> None:
    before = rec.job_index.version("ns", "r")  # type: ignore[union-attr]
    labelled = job(6)
    labelled["metadata"]["labels"]["touched"] = "yes"
    assert not rec.job_index.event("ns", "r", labelled, deleted=False)  # type: ignore[union-attr]
    assert rec.job_index.version("ns", "r") == before  # type: ignore[union-attr]


@pytest.mark.parametrize("change", [
    run(12, spec={"iterations": 3}),  # a spec change (suspend is one)
    run(12, labels={"team": "a"}),  # a label
    {**run(12), "metadata": {**run(12)["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}},  # deletion
    run(12, status={"phase": "Training", "note": "someone else's write"}),  # any other version of the run
])  # fmt: skip
def test_a_change_of_the_warprun_runs_a_pass(rec: Scripted, change: dict[str, Any]) -> None:
    rec.runs.put(change)  # type: ignore[union-attr]
    rec._process(KEY)
    assert (rec.passes_run, rec.passes.skipped) == (2, 0)


def test_a_spec_change_inside_the_pass_s_own_write_runs_a_pass(rec: Scripted) -> None:
    """The spec changed between the pass's read and its status PATCH: the PATCH's answer carries the new spec,
    and that version is not the pass's own (the handler of the change queued a pass that must run)."""
    assert rec.job_index.event("ns", "r", job(6, COMPLETE), deleted=False)  # type: ignore[union-attr]
    rec.write = run(12, spec={"iterations": 3}, status={"phase": "Training"})
    rec._process(KEY)  # read rv 10; the user's change (rv 11) and this status write: rv 12
    rec._process(KEY)  # queued by the change's handler
    assert (rec.passes_run, rec.passes.skipped) == (3, 0)


def test_a_failed_pass_s_retry_runs(rec: Scripted) -> None:
    assert rec.job_index.event("ns", "r", job(6, COMPLETE), deleted=False)  # type: ignore[union-attr]
    rec.fail = True
    with pytest.raises(RuntimeError):
        rec._process(KEY)
    rec.fail = False
    rec._process(KEY)  # the work queue's retry, over the same versions
    assert (rec.passes_run, rec.passes.skipped) == (3, 0)


def test_a_forced_pass_runs_once_and_the_next_one_is_compared_again(rec: Scripted) -> None:
    """The resync timer and the WarpRun handlers force their pass: time (deadlines, progress, backoff) and the
    store move without a version."""
    rec.queue.add = lambda *a, **k: None  # type: ignore[method-assign]  # no worker threads in this test
    rec.request("ns", "r", force=True)
    rec._process(KEY)
    rec._process(KEY)
    assert (rec.passes_run, rec.passes.skipped) == (2, 1)


def test_the_timer_s_resync_moves_the_version(rec: Scripted) -> None:
    rec.job_index.stale("ns", "r")  # type: ignore[union-attr]
    rec._process(KEY)
    assert (rec.passes_run, rec.passes.skipped) == (2, 0)


def test_a_forgotten_run_has_nothing_to_compare() -> None:
    ledger = PassLedger()
    ledger.done(KEY, (3, "10"), None)
    assert not ledger.begin(KEY, (3, "10"))
    ledger.forget(KEY)
    assert ledger.begin(KEY, (3, "10"))


def test_without_an_index_or_a_run_cache_every_pass_runs() -> None:
    ledger = PassLedger()
    ledger.done(KEY, None, None)
    assert ledger.begin(KEY, None) and ledger.begin(KEY, None)


def test_own_write_compares_what_a_pass_reads_of_the_run() -> None:
    assert own_write(run(10), run(11, status={"phase": "Training"}))
    assert not own_write(run(10), run(11, spec={"iterations": 3}))
    assert not own_write(run(10), run(11, labels={"team": "a"}))
    annotated = run(11)
    annotated["metadata"]["annotations"] = {"kopf.zalando.org/last-handled-configuration": "{}"}
    assert not own_write(run(10), annotated)


class OvertakingKube:
    """A Job POST whose ADDED event reaches the operator's Job handler before the POST's answer."""

    def __init__(self, index: JobIndex, answer: dict[str, Any] | None) -> None:
        self.index, self.answer = index, answer

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        added = {**job(7), "metadata": {**job(7)["metadata"], "name": manifest["metadata"]["name"], "uid": "uid-new"}}
        assert self.index.event(namespace, "r", added, deleted=False)  # the Job handler queues the run
        return added if self.answer is not None else None


@pytest.mark.parametrize(("answered", "skipped"), [(True, 1), (False, 0)])
def test_a_job_s_added_event_that_overtakes_its_post_answer(rec: Scripted, answered: bool, skipped: int) -> None:
    """The creating pass accounts for the Job it got back: the pass that the ADDED event queued is skipped. A
    POST answered 409 (the Job was someone else's) leaves the event news: that pass runs."""
    assert rec.job_index is not None
    rec.kube = OvertakingKube(rec.job_index, {} if answered else None)  # type: ignore[assignment]
    manifest = {"metadata": {"name": "r-i0-m0", "labels": {"kwarp.dev/run": "r"}}, "spec": {"template": {"spec": {}}}}
    token = rec._token(*KEY)
    assert rec._create_job("ns", manifest, "train", 0) is answered
    rec.passes.done(KEY, token, None)  # the creating pass ends
    rec._process(KEY)
    assert (rec.passes_run, rec.passes.skipped) == (2 - skipped, skipped)
