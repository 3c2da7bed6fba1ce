"""The operator's pure parts: conditions, Job observation, the spec it runs, the status it writes, the patch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kwarp.core.crd import crd
from kwarp.core.plan import Fail, Start, Succeed, Task, TaskJobs, all_tasks
from kwarp.core.spec import WarpRunSpec, parse
from kwarp.core.status import Condition, ExportStatus, IterationFront, ParetoPoint, WarpRunStatus
from kwarp.operator import conditions as C
from kwarp.operator.acceptance import cluster_problems, effective_spec
from kwarp.operator.observe import Failures, JobView, by_task, pod_failure, task_jobs, view
from kwarp.operator.results import last_evaluation
from kwarp.operator.status import (
    MemberResult,
    Observation,
    SpecCheck,
    build_status,
    checkpoints,
    export_status,
    invalid_status,
    point_at,
    previous_status,
    status_document,
    status_patch,
    store_down_status,
)

from .customresource import stored_form
from .test_spec import doc

T0, T1, T2 = "2030-01-01T00:00:00Z", "2030-01-01T00:01:00Z", "2030-01-01T00:02:00Z"
P, TR, MG, EV = Task.prepare(), Task.train, Task.merge, Task.eval


def spec(**patches: object) -> WarpRunSpec:
    base = {"spec.warp.iterations": 2, "spec.warp.policies": 2, "spec.warp.litiEta": 0.3}
    return parse(doc(**{**base, **patches})).spec


# ------------------------------------------------------------------ conditions


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    conds = C.set_condition([], C.READY, False, "Training", "iteration 0", now=T0, generation=1)
    conds = C.set_condition(conds, C.READY, False, "Merging", "iteration 0 merging", now=T1, generation=2)
    assert conds == [Condition(type="Ready", status="False", reason="Merging", message="iteration 0 merging",
                               last_transition_time=T0, observed_generation=2)]  # fmt: skip
    conds = C.set_condition(conds, C.READY, True, C.SUCCEEDED, "done", now=T2, generation=2)
    assert conds[0].status == "True" and conds[0].last_transition_time == T2


def test_clear_condition_adds_nothing_that_never_held_and_keeps_order() -> None:
    assert C.clear_condition([], C.SUSPENDED, C.RESUMED, now=T0, generation=1) == []
    conds = C.set_condition([], C.SUSPENDED, True, C.SUSPENDED_BY_USER, "held", now=T0, generation=1)
    conds = C.set_condition(conds, C.READY, False, "Suspended", "", now=T0, generation=1)
    conds = C.clear_condition(conds, C.SUSPENDED, C.RESUMED, "resumed", now=T1, generation=1)
    assert [(c.type, c.status, c.reason, c.last_transition_time) for c in conds] == [
        ("Suspended", "False", "Resumed", T1),
        ("Ready", "False", "Suspended", T0),
    ]


# ------------------------------------------------------------------ Jobs -> attempts


def job(name: str, task_id: str, attempt: int = 0, *, status: dict | None = None, suspend: bool = False) -> dict:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}",
                     "labels": {"kwarp.dev/task": task_id, "kwarp.dev/attempt": str(attempt)}},
        "spec": {"suspend": suspend},
        "status": status or {},
    }  # fmt: skip


COMPLETE = {"startTime": T0, "completionTime": T1, "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
FAILED = {"startTime": T0, "failed": 1, "conditions": [
    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}  # fmt: skip

VIEW_CASES = [
    ("created, no pod yet", job("r-i0-m0", "i0-m0"), "Pending"),
    ("running", job("r-i0-m0", "i0-m0", status={"active": 1, "startTime": T0}), "Running"),
    ("suspended", job("r-i0-m0", "i0-m0", status={"startTime": T0}, suspend=True), "Suspended"),
    ("complete", job("r-i0-m0", "i0-m0", status=COMPLETE), "Succeeded"),
    ("failed", job("r-i0-m0-r1", "i0-m0", 1, status=FAILED), "Failed"),
    ("failure decided, pod still terminating", job("r-i0-merge", "i0-merge", status={"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 2"}]}), "Failed"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "obj", "state"), VIEW_CASES, ids=[c[0] for c in VIEW_CASES])
def test_view_state(case: str, obj: dict, state: str) -> None:
    v = view(obj)
    assert v is not None and v.state == state


def test_view_reads_task_attempt_times_and_failure() -> None:
    v = view(job("r-i1-m0-r1", "i1-m0", 1, status=FAILED))
    assert v == JobView(name="r-i1-m0-r1", uid="uid-r-i1-m0-r1", task=TR(1, 0), attempt=1, state="Failed",
                        start_time=T0, completion_time=None, failure_reason="BackoffLimitExceeded",
                        failure="BackoffLimitExceeded: Job has reached the specified backoff limit")  # fmt: skip
    assert view({"metadata": {"name": "unrelated", "labels": {}}}) is None


def attempts(*objs: dict) -> dict[Task, list[JobView]]:
    return by_task([v for o in objs if (v := view(o)) is not None])


TASK_JOBS_CASES = [
    ("no jobs", {}, frozenset(), {}, {}),
    ("one running", attempts(job("a", "i0-m0", status={"active": 1})), frozenset(), {},
     {TR(0, 0): TaskJobs(active=True)}),
    ("suspended attempt", attempts(job("a", "i0-m0", suspend=True)), frozenset(), {},
     {TR(0, 0): TaskJobs(active=True, suspended=True)}),
    ("failed then running retry", attempts(job("a", "i0-m0", 0, status=FAILED), job("a-r1", "i0-m0", 1, status={"active": 1})),
     frozenset(), {},
     {TR(0, 0): TaskJobs(active=True, failures=1, last_failure="Job a BackoffLimitExceeded: Job has reached the specified backoff limit")}),
    ("completed but outputs missing counts as a failure", attempts(job("m", "i0-merge", status=COMPLETE)), frozenset(), {},
     {MG(0): TaskJobs(failures=1, last_failure="Job m completed, but the task's outputs are not complete in the store")}),
    ("completed and done", attempts(job("m", "i0-merge", status=COMPLETE)), frozenset({MG(0)}), {},
     {MG(0): TaskJobs()}),
    ("Jobs gone (TTL): recorded failures persist", {}, frozenset(), {TR(0, 1): Failures(2, "OOMKilled")},
     {TR(0, 1): TaskJobs(failures=2, last_failure="OOMKilled")}),
    ("recorded count below observed: observed wins", attempts(job("a", "i0-m0", 0, status=FAILED), job("a-r1", "i0-m0", 1, status=FAILED)),
     frozenset(), {TR(0, 0): Failures(1, "old")},
     {TR(0, 0): TaskJobs(failures=2, last_failure="Job a-r1 BackoffLimitExceeded: Job has reached the specified backoff limit")}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "att", "done", "recorded", "want"), TASK_JOBS_CASES, ids=[c[0] for c in TASK_JOBS_CASES])
def test_task_jobs(case: str, att: dict, done: frozenset, recorded: dict, want: dict) -> None:
    assert task_jobs(att, done, recorded=recorded) == want


def test_task_jobs_quotes_the_pod_message() -> None:
    att = attempts(job("a", "i0-m0", status=FAILED))
    got = task_jobs(att, frozenset(), messages={"a": "Job a failed; container trainer exited with code 137 (OOMKilled)"})
    assert got[TR(0, 0)].last_failure == "Job a failed; container trainer exited with code 137 (OOMKilled)"


@pytest.mark.parametrize(("pod", "want"), [
    ({"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled", "message": ""}}}]}},
     "container trainer exited with code 137 (OOMKilled)"),
    ({"status": {"containerStatuses": [{"name": "merger", "state": {"terminated": {
        "exitCode": 2, "reason": "Error", "message": "Traceback...\nkwarp merge: error: spec.policy.location: missing\n"}}}]}},
     "container merger exited with code 2 (Error): kwarp merge: error: spec.policy.location: missing"),
    ({"status": {"containerStatuses": [{"name": "t", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}, None),
    ({"status": {"phase": "Pending"}}, None),
])  # fmt: skip
def test_pod_failure(pod: dict, want: str | None) -> None:
    assert pod_failure(pod) == want


# ------------------------------------------------------------------ which spec runs


def body(**patches: object) -> dict[str, Any]:
    d = doc(**{"spec.warp.iterations": 2, "spec.warp.policies": 2, **patches})
    d["metadata"] = {"name": "gemma-warp", "namespace": "team-a", "uid": "u1", "generation": 3}
    return d


def test_first_valid_spec_is_accepted() -> None:
    got, check = effective_spec(body(), None)
    assert got == parse(body()).spec and check == SpecCheck()


def test_safe_changes_are_taken() -> None:
    accepted = parse(body()).spec
    got, check = effective_spec(body(**{"spec.suspend": True, "spec.failurePolicy": {"maxRetries": 5}}), accepted)
    assert check == SpecCheck() and got is not None
    assert got.suspend is True and got.failure_policy.max_retries == 5


def test_unsafe_changes_are_refused_and_safe_ones_still_apply() -> None:
    accepted = parse(body()).spec
    edited = body(**{"spec.warp.iterations": 5, "spec.training.seed": 7, "spec.suspend": True})
    got, check = effective_spec(edited, accepted)
    assert check.refused == ("spec.warp", "spec.training") and check.invalid is None
    assert got is not None and got.warp.iterations == 2 and got.training.seed == 0 and got.suspend is True


def test_invalid_edit_keeps_the_accepted_spec_running() -> None:
    accepted = parse(body()).spec
    got, check = effective_spec(body(**{"spec.warp.beta": -1}), accepted)
    assert got == accepted
    assert check.invalid is not None and "spec.warp.beta" in check.invalid


def test_invalid_first_spec_runs_nothing() -> None:
    got, check = effective_spec(body(**{"spec.warp.policies": 0}), None)
    assert got is None and check.invalid is not None and "spec.warp.policies" in check.invalid


def test_relative_paths_are_invalid_in_a_cluster() -> None:
    problems = cluster_problems(parse(body(**{"spec.storage": {"url": "runs"}, "spec.data.train": "data/train.jsonl"})).spec)
    assert [p.split(":")[0].strip(" -") for p in problems] == ["spec.storage.url", "spec.data.train"]
    exporting = body(**{"spec.storage": {"url": "s3://kwarp/runs"}, "spec.export": {"eta": 0.3, "to": "policy"}})
    assert [p.split(":")[0].strip(" -") for p in cluster_problems(parse(exporting).spec)] == ["spec.export.to"]
    got, check = effective_spec(body(**{"spec.storage": {"url": "runs"}}), None)
    assert got is None and "spec.storage.url" in (check.invalid or "")


# ------------------------------------------------------------------ the status


EVAL0 = {
    "iteration": 0,
    "front": [{"eta": 0.0, "reward": 0.1, "kl": 0.0}, {"eta": 0.3, "reward": 0.5, "kl": 1.5, "reward_stderr": 0.01},
              {"eta": 1.0, "reward": 0.9, "kl": 6.0}, {"eta": "bad"}],
    "members": [{"member": 0, "reward": 0.8, "kl": 5.0}, {"member": 1, "reward": 0.7, "kl": 4.0}],
}  # fmt: skip


def status_for(s: WarpRunSpec, obs: Observation, actions: list, previous: WarpRunStatus | None = None,
               check: SpecCheck = SpecCheck(), now: str = T1) -> WarpRunStatus:  # fmt: skip
    return build_status(run="r", spec=s, generation=3, previous=previous or WarpRunStatus(start_time=T0),
                        check=check, obs=obs, actions=actions, store_url="s3://kwarp/runs", now=now)  # fmt: skip


def test_status_while_training() -> None:
    s = spec()
    running = view(job("r-i0-m1", "i0-m1", status={"active": 1, "startTime": T0}))
    done = frozenset({P, TR(0, 0)})
    obs = Observation(done=done, attempts=by_task([running]), jobs={TR(0, 1): TaskJobs(active=True)})
    st = status_for(s, obs, [])
    assert (st.phase, st.iteration, st.members_done, st.reward, st.kl) == ("Training", 0, "1/2", None, None)
    assert [(m.iteration, m.member, m.state, m.job, m.attempts) for m in st.members] == [
        (0, 0, "Succeeded", None, 0), (0, 1, "Running", "r-i0-m1", 1)]
    assert st.checkpoints == {"base": "s3://kwarp/runs/r/base"}
    assert st.observed_generation == 3 and st.start_time == T0 and st.completion_time is None
    ready = C.find(st.conditions, C.READY)
    assert ready is not None and ready.status == "False" and ready.reason == "Training"
    assert ready.message == "iteration 0 of 2 (0-based): 1/2 members trained"
    assert st.accepted_spec == s


def test_status_after_an_evaluated_iteration() -> None:
    s = spec()
    done = frozenset({P, TR(0, 0), TR(0, 1), MG(0), EV(0)})
    obs = Observation(done=done, fronts={0: EVAL0}, members={(0, 0): MemberResult(0.8, 5.0), (0, 1): MemberResult(0.7, 4.0)})
    st = status_for(s, obs, [Start(TR(1, 0), 0), Start(TR(1, 1), 0)])
    assert (st.phase, st.iteration, st.members_done) == ("Training", 1, "0/2")
    assert (st.reward, st.kl) == (0.5, 1.5)  # the front's point at η = litiEta = 0.3
    assert [p.eta for p in st.pareto[0].points] == [0.0, 0.3, 1.0]  # the malformed point is left out
    assert st.pareto[0].points[1] == ParetoPoint(eta=0.3, reward=0.5, kl=1.5, reward_stderr=0.01)
    assert [(m.iteration, m.member, m.reward, m.kl) for m in st.members] == [
        (0, 0, 0.8, 5.0), (0, 1, 0.7, 4.0), (1, 0, None, None), (1, 1, None, None)]
    assert st.checkpoints == {
        "base": "s3://kwarp/runs/r/base",
        "iter-0/slerp": "s3://kwarp/runs/r/iter-0/slerp",
        "iter-1/init": "s3://kwarp/runs/r/iter-1/init",
    }


def test_status_succeeded() -> None:
    s = spec()
    eval1 = {**EVAL0, "iteration": 1, "front": [{"eta": 0.3, "reward": 0.75, "kl": 2.0}]}
    obs = Observation(done=frozenset(all_tasks(s)), fronts={0: EVAL0, 1: eval1})
    st = status_for(s, obs, [Succeed()], now=T2)
    assert (st.phase, st.iteration, st.members_done, st.reward, st.kl) == ("Succeeded", 2, "2/2", 0.75, 2.0)
    assert st.completion_time == T2 and st.checkpoints["final"] == "s3://kwarp/runs/r/iter-1/slerp"
    assert C.is_true(st.conditions, C.READY) and [f.iteration for f in st.pareto] == [0, 1]


EXPORT_RECORD = {
    "location": "s3://models/r-kl2", "eta": 0.42, "request": {"kl_budget": 2.0}, "within_budget": True,
    "measured": {"reward": 0.6, "reward_stderr": 0.02, "kl": 1.9, "kl_stderr": 0.15, "length": 7.5, "per_prompt": {}},
}  # fmt: skip


def test_status_of_an_exported_run_gives_where_and_what_it_measured() -> None:
    s = spec(**{"spec.export": {"klBudget": 2.0, "to": "s3://models/r-kl2"}})
    eval1 = {**EVAL0, "iteration": 1}
    waiting = status_for(s, Observation(done=frozenset(all_tasks(s)) - {Task.export()}, fronts={0: EVAL0, 1: eval1},
                                        export=EXPORT_RECORD), [Start(Task.export(), 0)])  # fmt: skip
    assert waiting.phase == "Evaluating" and waiting.export is None and "export" not in waiting.checkpoints
    st = status_for(s, Observation(done=frozenset(all_tasks(s)), fronts={0: EVAL0, 1: eval1}, export=EXPORT_RECORD),
                    [Succeed()])  # fmt: skip
    assert st.phase == "Succeeded" and st.checkpoints["export"] == "s3://models/r-kl2"
    assert st.export == ExportStatus(location="s3://models/r-kl2", eta=0.42, kl_budget=2.0, reward=0.6,
                                     reward_stderr=0.02, kl=1.9, kl_stderr=0.15, within_budget=True)  # fmt: skip
    assert "exported" in C.find(st.conditions, C.READY).message
    # An unreadable record leaves status.export out rather than failing the status.
    assert export_status({"location": 3}) is None and export_status(None) is None


def test_status_failed_names_the_task_and_keeps_failure_counts() -> None:
    s = spec()
    reason = "i0-m1 failed 3 times (failurePolicy.maxRetries=2): Job r-i0-m1-r2 BackoffLimitExceeded: ..."
    obs = Observation(done=frozenset({P, TR(0, 0)}), jobs={TR(0, 1): TaskJobs(failures=3, last_failure="OOMKilled")})
    st = status_for(s, obs, [Fail(TR(0, 1), reason)])
    assert st.phase == "Failed"
    failed = C.find(st.conditions, C.FAILED)
    assert failed is not None and (failed.status, failed.reason, failed.message) == ("True", C.TASK_FAILED, reason)
    assert status_document(st)["failures"] == {"i0-m1": {"count": 3, "reason": "OOMKilled"}}
    # Raising maxRetries (a safe change) resumes the run: Failed goes False, the phase moves on.
    again = status_for(spec(**{"spec.failurePolicy": {"maxRetries": 5}}), obs, [Start(TR(0, 1), 3)], previous=st)
    assert again.phase == "Training" and not C.is_true(again.conditions, C.FAILED)
    assert C.find(again.conditions, C.FAILED) is not None  # stays, False, with its transition time


def test_status_suspended_and_refused() -> None:
    s = spec(**{"spec.suspend": True})
    obs = Observation(done=frozenset({P}), jobs={TR(0, 0): TaskJobs(active=True, suspended=True),
                                                 TR(0, 1): TaskJobs(active=True, suspended=True)})  # fmt: skip
    st = status_for(s, obs, [], check=SpecCheck(refused=("spec.warp",)))
    assert st.phase == "Suspended"
    suspended = C.find(st.conditions, C.SUSPENDED)
    assert suspended is not None and suspended.status == "True" and "2 Job(s) held" in suspended.message
    refused = C.find(st.conditions, C.SPEC_CHANGE_REFUSED)
    assert refused is not None and refused.status == "True" and refused.message.startswith("spec.warp changed")


def test_invalid_status() -> None:
    st = invalid_status(WarpRunStatus(), SpecCheck(invalid="WarpRun: spec.warp.policies: must be >= 1"), now=T0, generation=1)
    assert st.phase == "Failed" and st.start_time == T0
    invalid = C.find(st.conditions, C.INVALID)
    assert invalid is not None and invalid.status == "True" and "spec.warp.policies" in invalid.message


def test_point_at_takes_the_nearest_eta() -> None:
    pts = [ParetoPoint(eta=e, reward=e, kl=e) for e in (0.0, 0.5, 1.0)]
    assert point_at(pts, 0.3) == pts[1] and point_at([], 0.3) is None


def test_checkpoints_of_a_one_iteration_run() -> None:
    s = spec(**{"spec.warp.iterations": 1})
    assert checkpoints(s, "r", frozenset({P, MG(0)}), "file:///data") == {
        "base": "file:///data/r/base", "iter-0/slerp": "file:///data/r/iter-0/slerp",
        "final": "file:///data/r/iter-0/slerp"}  # fmt: skip


# ------------------------------------------------------------------ what is sent


def test_status_patch_is_none_when_nothing_changed_and_minimal_otherwise() -> None:
    s = spec()
    st = status_for(s, Observation(done=frozenset({P})), [Start(TR(0, 0), 0), Start(TR(0, 1), 0)])
    stored = status_document(st)
    assert status_patch(stored, st) is None
    later = st.model_copy(update={"phase": "Merging", "reward": None})
    assert status_patch({**stored, "reward": 0.1, "kopf": {"x": 1}}, later) == {"phase": "Merging", "reward": None}
    # the stored status as previous_status read it (a pass reads it once, at its start): the same patches
    assert status_patch(previous_status(stored), st) is None
    old = previous_status({**stored, "reward": 0.1, "kopf": {"x": 1}})
    assert status_patch(old, later) == {"phase": "Merging", "reward": None}


def test_server_defaults_do_not_make_a_status_look_changed() -> None:
    """The API server fills the CRD schema's defaults into what the operator wrote (nulls, "Pending",
    every default of acceptedSpec): reading that back must not ask for another patch."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    s = spec()
    obs = Observation(done=frozenset({P, TR(0, 0), TR(0, 1), MG(0), EV(0)}), fronts={0: EVAL0},
                      members={(0, 0): MemberResult(0.8, 5.0)})  # fmt: skip
    st = status_for(s, obs, [Start(TR(1, 0), 0), Start(TR(1, 1), 0)])
    stored = stored_form(status_document(st), schema)
    # (Whether the server adds anything depends on the schema's defaults; either way no patch is due.)
    assert status_patch(stored, st) is None
    assert previous_status(stored).accepted_spec == s


def test_previous_status_drops_only_what_does_not_parse() -> None:
    st = previous_status({"phase": "Training", "members": "garbage", "startTime": T0, "unknown": 1})
    assert (st.phase, st.members, st.start_time) == ("Training", [], T0)


# ------------------------------------------------------------------ store files


def test_last_evaluation_reads_the_latest_eval_block() -> None:
    lines = [
        {"step": 1, "reward": 0.1, "eval": {"reward": 0.2, "kl_sft": 0.5}},
        {"step": 2, "reward": 0.3, "eval": {"reward": 0.4, "kl_sft": 0.9}},
        {"step": 3, "reward": 0.6},
    ]
    data = "\n".join(json.dumps(x) for x in lines).encode() + b"\n{broken"
    assert last_evaluation(data) == MemberResult(0.4, 0.9)
    assert last_evaluation(None) == MemberResult() and last_evaluation(b'{"step": 1}') == MemberResult()


# ------------------------------------------------------------------ while the store is unreachable


def test_store_down_status_keeps_what_the_store_showed_and_follows_suspend() -> None:
    front = IterationFront(iteration=0, points=[ParetoPoint(eta=0.3, reward=1.0, kl=2.0)])
    previous = WarpRunStatus(phase="Training", iteration=1, members_done="1/2", pareto=[front],
                             checkpoints={"base": "s3://b/r/base"}, start_time=T0)  # fmt: skip
    active = {TR(1, 0): TaskJobs(active=True), TR(1, 1): TaskJobs(active=True, suspended=True)}
    known = frozenset({P, TR(0, 0), TR(0, 1), MG(0), EV(0), TR(1, 1)})
    held = store_down_status(spec=spec(**{"spec.suspend": True}), generation=3, previous=previous, check=SpecCheck(),
                             jobs=active, known_done=known, error="cannot reach S3 endpoint m:9000", now=T1)  # fmt: skip
    assert held.phase == "Suspended"
    assert (held.pareto, held.checkpoints, held.members_done, held.start_time) == ([front], {"base": "s3://b/r/base"}, "1/2", T0)
    down = C.find(held.conditions, C.STORE_UNAVAILABLE)
    assert down is not None and (down.status, down.reason, down.message) == ("True", C.STORE_ERROR, "cannot reach S3 endpoint m:9000")
    assert C.is_true(held.conditions, C.SUSPENDED) and held.observed_generation == 3
    # Resumed while still down: the phase of what was seen done before (iteration 1, training).
    resumed = store_down_status(spec=spec(), generation=4, previous=held, check=SpecCheck(), jobs=active,
                                known_done=known, error="still down", now=T2)  # fmt: skip
    assert resumed.phase == "Training" and not C.is_true(resumed.conditions, C.SUSPENDED)
    assert C.find(resumed.conditions, C.STORE_UNAVAILABLE).last_transition_time == T1  # type: ignore[union-attr]
    # A finished run stays finished.
    done = store_down_status(spec=spec(**{"spec.suspend": True}), generation=5, previous=previous.model_copy(update={"phase": "Succeeded"}),
                             check=SpecCheck(), jobs={}, known_done=known, error="down", now=T2)  # fmt: skip
    assert done.phase == "Succeeded"


@pytest.mark.parametrize(
    ("name", "nodes", "refused"),
    [
        ("gemma-warp", 2, False),
        ("7up", 1, False),  # one node: no Service, any run name the API server takes will do
        ("7up", 2, True),  # a run name may start with a digit (DNS-1123); a Service name may not (DNS-1035)
        ("w" * 40, 2, False),  # the longest run name: <run>-i2-m1-r5-1 is 51 characters
    ],
)
def test_a_multi_node_run_needs_a_name_its_services_can_take(name: str, nodes: int, refused: bool) -> None:
    doc = body(**{"spec.resources": {"trainer": {"nodes": nodes}}, "spec.warp.iterations": 3,
                  "spec.failurePolicy": {"maxRetries": 5}})  # fmt: skip
    doc["metadata"]["name"] = name
    problems = cluster_problems(parse(doc).spec, name)
    assert bool(problems) == refused, problems
    if refused:
        assert problems[0].startswith("  - metadata.name: ") and "DNS-1035" in problems[0]
        got, check = effective_spec(doc, None)
        assert got is None and "metadata.name" in (check.invalid or "")
