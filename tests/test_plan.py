"""The plan, table-driven: (observed state) -> exact actions."""

from __future__ import annotations

import pytest

from kwarp.core.plan import (
    Fail,
    Observed,
    Resume,
    Start,
    Succeed,
    Suspend,
    Task,
    TaskJobs,
    all_tasks,
    plan,
    plan_without_store,
    progress,
)
from kwarp.core.spec import WarpRunSpec, parse

from .test_spec import doc

P, T, MG, EV = Task.prepare(), Task.train, Task.merge, Task.eval


def spec(**patches: object) -> WarpRunSpec:
    base = {"spec.warp.iterations": 2, "spec.warp.policies": 2, "spec.failurePolicy": {"maxRetries": 1}}
    return parse(doc(**{**base, **patches})).spec


def done_through(*tasks: Task) -> frozenset[Task]:
    return frozenset(tasks)


ITER0_TRAINED = done_through(P, T(0, 0), T(0, 1))
ITER0_MERGED = ITER0_TRAINED | {MG(0)}
ALL = frozenset(all_tasks(spec()))

CASES = [
    ("fresh run", Observed(), [Start(P, 0)]),
    ("prepare running", Observed(jobs={P: TaskJobs(active=True)}), []),
    ("prepared: all members start", Observed(done=done_through(P)), [Start(T(0, 0), 0), Start(T(0, 1), 0)]),
    (
        "partial iteration: one member done, one running",
        Observed(done=done_through(P, T(0, 0)), jobs={T(0, 1): TaskJobs(active=True)}),
        [],
    ),
    (
        "partial iteration: one member done, one never started (restarted executor)",
        Observed(done=done_through(P, T(0, 0))),
        [Start(T(0, 1), 0)],
    ),
    (
        "member failed, retries left",
        Observed(done=done_through(P, T(0, 0)), jobs={T(0, 1): TaskJobs(failures=1, last_failure="OOMKilled")}),
        [Start(T(0, 1), 1)],
    ),
    (
        "member failed, no retries left",
        Observed(done=done_through(P, T(0, 0)), jobs={T(0, 1): TaskJobs(failures=2, last_failure="OOMKilled")}),
        [Fail(T(0, 1), "i0-m1 failed 2 times (failurePolicy.maxRetries=1): OOMKilled")],
    ),
    ("members done: merge", Observed(done=ITER0_TRAINED), [Start(MG(0), 0)]),
    (
        "merge done: evaluation beside the next iteration",
        Observed(done=ITER0_MERGED),
        [Start(EV(0), 0), Start(T(1, 0), 0), Start(T(1, 1), 0)],
    ),
    (
        "evaluation done, next iteration running",
        Observed(done=ITER0_MERGED | {EV(0)}, jobs={T(1, 0): TaskJobs(active=True), T(1, 1): TaskJobs(active=True)}),
        [],
    ),
    (
        "last iteration merged: its evaluation",
        Observed(done=ALL - {EV(1)}),
        [Start(EV(1), 0)],
    ),
    ("last iteration done: succeed", Observed(done=ALL), [Succeed()]),
    ("finished run plans nothing", Observed(done=ALL, succeeded=True), []),
    (
        "a retried merge keeps its attempt count",
        Observed(done=ITER0_TRAINED, jobs={MG(0): TaskJobs(failures=1, last_failure="x")}),
        [Start(MG(0), 1)],
    ),
]


@pytest.mark.parametrize(("name", "observed", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan(name: str, observed: Observed, expected: list) -> None:
    assert plan(spec(), observed) == expected


SUSPEND_CASES = [
    (
        "suspend running members",
        Observed(done=done_through(P), jobs={T(0, 0): TaskJobs(active=True), T(0, 1): TaskJobs(active=True)}),
        [Suspend(T(0, 0)), Suspend(T(0, 1))],
    ),
    (
        "already suspended: nothing",
        Observed(done=done_through(P), jobs={T(0, 0): TaskJobs(active=True, suspended=True)}),
        [],
    ),
    ("suspended fresh run starts nothing", Observed(), []),
]


@pytest.mark.parametrize(("name", "observed", "expected"), SUSPEND_CASES, ids=[c[0] for c in SUSPEND_CASES])
def test_plan_suspended(name: str, observed: Observed, expected: list) -> None:
    assert plan(spec(**{"spec.suspend": True}), observed) == expected


def test_resume_after_suspend() -> None:
    obs = Observed(done=done_through(P), jobs={T(0, 0): TaskJobs(active=True, suspended=True)})
    assert plan(spec(), obs) == [Resume(T(0, 0)), Start(T(0, 1), 0)]


BLIND_CASES = [
    # (name, spec.suspend, observed, expected): only the Jobs are known, the store is not.
    ("suspend holds every active Job, whatever the store would say", True,
     Observed(done=done_through(P), jobs={T(0, 0): TaskJobs(active=True), T(0, 1): TaskJobs(active=True, suspended=True)}),
     [Suspend(T(0, 0))]),
    ("resume releases the suspended ones and starts nothing", False,
     Observed(done=done_through(P), jobs={T(0, 0): TaskJobs(active=True, suspended=True), T(0, 1): TaskJobs()}),
     [Resume(T(0, 0))]),
    ("a run with nothing seen done and no Jobs: nothing at all (plan would start prepare)", False, Observed(), []),
    ("failures exhausted: no Fail on a guess", False,
     Observed(done=done_through(P), jobs={T(0, 0): TaskJobs(failures=5, last_failure="x"),
                                          T(0, 1): TaskJobs(active=True, suspended=True)}),
     [Resume(T(0, 1))]),
    ("every task seen done: no Succeed either", False, Observed(done=ALL), []),
]  # fmt: skip


@pytest.mark.parametrize(("name", "suspend", "observed", "expected"), BLIND_CASES, ids=[c[0] for c in BLIND_CASES])
def test_plan_without_store(name: str, suspend: bool, observed: Observed, expected: list) -> None:
    assert plan_without_store(spec(**{"spec.suspend": suspend}), observed) == expected


def test_raising_retries_lets_a_failed_run_continue() -> None:
    obs = Observed(done=done_through(P, T(0, 0)), jobs={T(0, 1): TaskJobs(failures=2, last_failure="x")})
    assert isinstance(plan(spec(), obs)[0], Fail)
    assert plan(spec(**{"spec.failurePolicy": {"maxRetries": 3}}), obs) == [Start(T(0, 1), 2)]


def test_plan_is_deterministic_and_never_duplicates() -> None:
    obs = Observed(done=ITER0_MERGED)
    first = plan(spec(), obs)
    assert first == plan(spec(), obs)
    started = {a.task for a in first if isinstance(a, Start)}
    running = Observed(done=ITER0_MERGED, jobs={t: TaskJobs(active=True) for t in started})
    assert plan(spec(), running) == []


@pytest.mark.parametrize(
    ("observed", "phase", "iteration", "members"),
    [
        (Observed(), "Pending", 0, 0),
        (Observed(done=done_through(P, T(0, 0))), "Training", 0, 1),
        (Observed(done=ITER0_TRAINED), "Merging", 0, 2),
        (Observed(done=ITER0_MERGED), "Training", 1, 0),
        (Observed(done=ALL - {EV(1)}), "Evaluating", 2, 2),
        (Observed(done=ALL), "Succeeded", 2, 2),
    ],
)
def test_progress(observed: Observed, phase: str, iteration: int, members: int) -> None:
    p = progress(spec(), observed)
    assert (p.phase, p.iteration, p.members_done) == (phase, iteration, members)


def test_task_names_and_commands() -> None:
    assert T(1, 3).job_name("run") == "run-i1-m3"
    assert T(1, 3).job_name("run", 2) == "run-i1-m3-r2"
    assert MG(0).job_name("run") == "run-i0-merge" and EV(2).job_name("r") == "r-i2-eval"
    assert P.job_name("r") == "r-prepare"
    assert T(1, 3).argv() == ["train", "--iteration", "1", "--member", "3"]
    assert MG(2).argv() == ["merge", "--iteration", "2"] and P.argv() == ["prepare"]
    for t in all_tasks(spec()):
        assert Task.parse_id(t.id) == t


# ------------------------------------------------------------------ spec.export: one more task, last

EX = Task.export()
EXPORTING = {"spec.export": {"klBudget": 2.0}}
ALL_EXPORT = frozenset(all_tasks(spec(**EXPORTING)))

EXPORT_CASES = [
    ("the export waits for the last front", Observed(done=ALL_EXPORT - {EV(1), EX}), [Start(EV(1), 0)]),
    ("last front evaluated: the export", Observed(done=ALL_EXPORT - {EX}), [Start(EX, 0)]),
    ("export running", Observed(done=ALL_EXPORT - {EX}, jobs={EX: TaskJobs(active=True)}), []),
    ("export failed, retries left", Observed(done=ALL_EXPORT - {EX}, jobs={EX: TaskJobs(failures=1, last_failure="x")}),
     [Start(EX, 1)]),
    ("export failed, no retries left", Observed(done=ALL_EXPORT - {EX}, jobs={EX: TaskJobs(failures=2, last_failure="x")}),
     [Fail(EX, "export failed 2 times (failurePolicy.maxRetries=1): x")]),
    ("exported: succeed", Observed(done=ALL_EXPORT), [Succeed()]),
]


@pytest.mark.parametrize(("name", "observed", "expected"), EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_plan_with_an_export(name: str, observed: Observed, expected: list) -> None:
    assert plan(spec(**EXPORTING), observed) == expected


def test_the_export_is_a_task_only_when_asked_for() -> None:
    assert EX not in all_tasks(spec()) and all_tasks(spec(**EXPORTING))[-1] == EX
    assert EX.job_name("r") == "r-export" and EX.argv() == ["export"] and Task.parse_id("export") == EX
    # Until the export is done the run is not over: it reads as evaluating (the export evaluates its policy).
    p = progress(spec(**EXPORTING), Observed(done=ALL_EXPORT - {EX}))
    assert p.phase == "Evaluating" and progress(spec(**EXPORTING), Observed(done=ALL_EXPORT)).phase == "Succeeded"
