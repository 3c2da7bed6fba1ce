"""Work that never ends or silently breaks, on the operator's side (operator/watchdog.py, issue 14 defect 9).

Pure pieces table by table; then the operator against the API server emulator (tests/kube.py), whose
Job runner applies activeDeadlineSeconds as the Job controller does and whose pods the tests give the
statuses a kubelet would write.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kwarp.core.plan import Task
from kwarp.core.resources import PodResources
from kwarp.core.spec import parse
from kwarp.operator import conditions as C
from kwarp.operator.jobs import WorkerSettings, job_manifest
from kwarp.operator.observe import JobView, pod_failure, view
from kwarp.operator.watchdog import Heartbeat, StuckPod, fail_patch, stalled, stuck_pods
from kwarp.store import layout

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for, wait_value
from .operator_harness import (
    NS,
    WAIT,
    Api,
    finish,
    jobs_named,
    options,
    phase_is,
    posted,
    reconciles,
    warprun,
)
from .prom import free_port

UID = "0c6f2a52-7f4e-4a59-9a36-3f3b2f0e8d11"

# ------------------------------------------------------------------------------ pure pieces


def pod(name: str, job: str, *, waiting: tuple[str, str] | None = None, init: bool = False,
        deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"phase": "Pending"}
    if waiting is not None:
        key = "initContainerStatuses" if init else "containerStatuses"
        status[key] = [{"name": "trainer", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                        "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]  # fmt: skip
    meta: dict[str, Any] = {"name": name, "labels": {"job-name": job}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": status}


PULL = ("ImagePullBackOff", 'Back-off pulling image "registry.example/kwarp:typo"')
SECRET = ("CreateContainerConfigError", 'secret "kwarp-s3" not found')


@pytest.mark.parametrize(("pods", "active", "want"), [
    ([pod("a-x", "a", waiting=PULL)], ["a"], [StuckPod("a-x", "a", "trainer", *PULL)]),
    ([pod("a-x", "a", waiting=SECRET, init=True)], ["a"], [StuckPod("a-x", "a", "trainer", *SECRET)]),
    ([pod("a-x", "a", waiting=("ContainerCreating", ""))], ["a"], []),  # on its way
    ([pod("a-x", "a", waiting=PULL)], ["b"], []),  # a finished Job's pod is no longer the run's problem
    ([pod("a-x", "a", waiting=PULL, deleting=True)], ["a"], []),
    ([pod("b-y", "b", waiting=SECRET), pod("a-x", "a", waiting=PULL), pod("c-z", "c")], ["a", "b", "c"],
     [StuckPod("a-x", "a", "trainer", *PULL), StuckPod("b-y", "b", "trainer", *SECRET)]),
])  # fmt: skip
def test_stuck_pods(pods: list[dict], active: list[str], want: list[StuckPod]) -> None:
    assert stuck_pods(pods, active) == want


def job(state: str = "Running", start: str | None = "2026-01-01T00:00:00Z", kind: str = "train") -> JobView:
    task = Task.train(0, 1) if kind == "train" else Task.merge(0)
    return JobView(name="r-i0-m1", uid="u", task=task, attempt=0, state=state, start_time=start)  # type: ignore[arg-type]


T0 = 1767225600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("j", "beat", "now", "want"), [
    (job(), None, T0 + 60, None),  # within the deadline since the Job started
    (job(), None, T0 + 61, "it has completed no step since the Job started at 2026-01-01T00:00:00Z"),
    (job(), Heartbeat(5, 100, T0 + 100), T0 + 150, None),  # the last step is recent
    (job(), Heartbeat(5, 100, T0 + 100), T0 + 170, "its last step was 5/100 at 2026-01-01T00:01:40Z"),
    # A heartbeat older than the Job (an earlier attempt) does not count for this one.
    (job(), Heartbeat(90, 100, T0 - 500), T0 + 61, "it has completed no step since the Job started"),
    (job(state="Pending"), None, T0 + 1000, None),
    (job(state="Suspended"), None, T0 + 1000, None),
    (job(start=None), None, T0 + 1000, None),
    (job(kind="merge"), None, T0 + 1000, None),  # only trainers write heartbeats
])  # fmt: skip
def test_stalled(j: JobView, beat: Heartbeat | None, now: float, want: str | None) -> None:
    got = stalled(j, beat, now, deadline=60)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.startswith("NoProgress: no training progress for ") and want in got
        assert "failurePolicy.progressDeadlineSeconds is 60" in got


@pytest.mark.parametrize(("doc", "want"), [
    ({"step": 3, "steps": 10, "time": 5.5}, Heartbeat(3, 10, 5.5)),
    (None, None), ([], None), ({"step": 3}, None), ({"step": "x", "steps": 1, "time": 1}, None),
])  # fmt: skip
def test_heartbeat_parse(doc: Any, want: Heartbeat | None) -> None:
    assert Heartbeat.parse(doc) == want


def test_a_stalled_job_fails_with_the_watchdogs_reason() -> None:
    failed = {"metadata": {"name": "r-i0-m1", "uid": "u", "labels": {"kwarp.dev/task": "i0-m1"},
                           **fail_patch("NoProgress: no training progress for 99 s")["metadata"]},
              "spec": {"activeDeadlineSeconds": 1},
              "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                         "message": "Job was active longer than specified deadline"}]}}  # fmt: skip
    v = view(failed)
    assert v is not None and v.state == "Failed"
    assert v.failure_reason == "NoProgress" and v.failure == "NoProgress: no training progress for 99 s"


def test_an_evicted_pod_says_why() -> None:
    evicted = {"metadata": {"name": "r-i0-m1-abcde"}, "status": {
        "phase": "Failed", "reason": "Evicted",
        "message": 'Usage of EmptyDir volume "scratch" exceeds the limit "100Gi". '}}  # fmt: skip
    assert pod_failure(evicted) == ('pod r-i0-m1-abcde evicted by the kubelet: Usage of EmptyDir volume "scratch" '
                                    'exceeds the limit "100Gi".')


def test_jobs_carry_scratch_and_ephemeral_storage_limits_and_the_deadline() -> None:
    run = parse({"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": "r", "namespace": "ns"},
                 "spec": {"policy": {"location": "s3://m/sft"}, "reward": {"callable": "m:f"},
                          "data": {"train": "s3://d/t.jsonl", "eval": "s3://d/e.jsonl"},
                          "storage": {"url": "s3://kwarp/runs"},
                          "resources": {"trainer": {"ephemeralStorage": "200Gi", "scratchSizeLimit": "150Gi",
                                                    "activeDeadlineSeconds": 86400}}}})  # fmt: skip
    worker = WorkerSettings(image="w:1", defaults={"merger": PodResources(scratch_size_limit="20Gi")})
    trainer = job_manifest(run, UID, Task.train(0, 0), 0, worker)
    pod_spec = trainer["spec"]["template"]["spec"]
    assert trainer["spec"]["activeDeadlineSeconds"] == 86400
    assert pod_spec["volumes"][0] == {"name": "scratch", "emptyDir": {"sizeLimit": "150Gi"}}
    resources = pod_spec["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"] == "200Gi"
    merger = job_manifest(run, UID, Task.merge(0), 0, worker)  # the operator's default for the role
    assert merger["spec"]["template"]["spec"]["volumes"][0] == {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}
    assert "activeDeadlineSeconds" not in merger["spec"] and "resources" not in merger["spec"]["template"]["spec"]["containers"][0]
    plain = job_manifest(parse({**run.to_document(), "spec": {**run.to_document()["spec"], "resources": {}}}),
                         UID, Task.train(0, 0), 0, WorkerSettings(image="w:1"))
    assert plain["spec"]["template"]["spec"]["volumes"][0] == {"name": "scratch", "emptyDir": {}}


# ------------------------------------------------------------------------------ against the API server


def set_pod_status(api: Api, name: str, containers: list[dict[str, Any]]) -> None:
    api.core.patch_namespaced_pod_status(name, NS, {"status": {"containerStatuses": containers}},
                                         _content_type="application/merge-patch+json")  # fmt: skip


def set_job_ready(api: Api, name: str, ready: int) -> None:
    """The Job controller's count of the Job's ready pods (status.ready), as it follows its pods."""
    api.batch.patch_namespaced_job_status(name, NS, {"status": {"ready": ready}},
                                          _content_type="application/merge-patch+json")  # fmt: skip


def waiting(reason: str, message: str) -> list[dict[str, Any]]:
    return [{"name": "prepare", "ready": False, "restartCount": 0, "image": "kwarp-worker:test", "imageID": "",
             "state": {"waiting": {"reason": reason, "message": message}}}]  # fmt: skip


def test_pods_that_cannot_start_raise_a_condition_naming_them(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """An image that cannot be pulled, then a Secret that is missing: the run stays Pending with a
    condition (and a Warning Event) that names the pod, its Job and the kubelet's message; once the
    pod runs, the condition turns False."""
    with RunningOperator(cluster, options(resync_seconds=1)):
        api.create(warprun(store))
        jobs_named(api, "demo-prepare")
        wait_for(lambda: "demo-prepare" in runner.running(), WAIT, message="prepare running")
        pod_name = runner.jobs["demo-prepare"].pod
        assert pod_name is not None

        set_pod_status(api, pod_name, waiting(*PULL))
        set_job_ready(api, "demo-prepare", 0)  # a waiting container is not ready: the Job counts it so
        cond = wait_value(lambda: api.condition(C.PODS_STUCK), lambda c: c is not None and c["status"] == "True", WAIT,
                          message=lambda: f"PodsStuck; status {json.dumps(api.status())[:1500]}")
        assert cond["reason"] == "ImagePullBackOff"
        assert cond["message"] == (f"pod {pod_name} (Job demo-prepare, container prepare): ImagePullBackOff: "
                                   'Back-off pulling image "registry.example/kwarp:typo"')
        wait_for(lambda: any(t == "Warning" and r == "PodsStuck" and pod_name in m for t, r, m in api.events()), WAIT,
                 message="a PodsStuck Warning Event")

        set_pod_status(api, pod_name, waiting(*SECRET))
        cond = wait_value(lambda: api.condition(C.PODS_STUCK), lambda c: c["reason"] == "CreateContainerConfigError", WAIT,
                          message=lambda: f"CreateContainerConfigError; {api.condition(C.PODS_STUCK)}")
        assert cond["status"] == "True" and 'secret "kwarp-s3" not found' in cond["message"]

        set_pod_status(api, pod_name, [{"name": "prepare", "ready": True, "restartCount": 0, "image": "kwarp-worker:test",
                                        "imageID": "", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}])
        set_job_ready(api, "demo-prepare", 1)
        cond = wait_value(lambda: api.condition(C.PODS_STUCK), lambda c: c["status"] == "False", WAIT,
                          message=lambda: f"PodsStuck False; {api.condition(C.PODS_STUCK)}")
        assert cond["reason"] == C.PODS_STARTED


def test_pods_are_listed_only_while_a_job_has_a_pod_that_is_not_ready(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """While every active pod of the run's Jobs is ready (their status.ready), reconciles do not LIST the
    run's pods: for a label selector a real API server scans every pod of the namespace, so a LIST per
    reconcile grew with the runs there. A Job with a pod that is not ready has its pods looked at."""
    assert cluster.server is not None
    calls = cluster.server.calls
    port = free_port()
    with RunningOperator(cluster, options(resync_seconds=1, metrics_port=port, bind_address="127.0.0.1")):
        api.create(warprun(store))
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        wait_for(lambda: {"demo-i0-m0", "demo-i0-m1"} <= set(runner.running()), WAIT, message="members running")
        passes = reconciles(port)
        wait_for(lambda: reconciles(port) >= passes + 3, WAIT, message="3 more reconciles")
        assert calls["", "pods", "list"] == 0

        set_job_ready(api, "demo-i0-m0", 0)
        wait_for(lambda: calls["", "pods", "list"] > 0, WAIT, message="the run's pods listed")
        stuck = api.condition(C.PODS_STUCK)
        assert stuck is None or stuck["status"] == "False"  # not ready, nothing waiting: not stuck


def test_a_job_past_its_deadline_fails_the_task_with_the_reason(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """resources.<role>.activeDeadlineSeconds is the Job's: a task that hangs fails, and the run says why."""
    doc = warprun(store, failurePolicy={"maxRetries": 0}, resources={"merger": {"activeDeadlineSeconds": 1}})
    with RunningOperator(cluster, options()):
        api.create(doc)
        job = jobs_named(api, "demo-prepare")["demo-prepare"]
        assert job["spec"]["activeDeadlineSeconds"] == 1
        phase_is(api, "Failed")
    failed = api.condition(C.FAILED)
    assert failed is not None and failed["status"] == "True"
    assert "Job demo-prepare DeadlineExceeded: Job was active longer than specified deadline" in failed["message"]


def test_a_trainer_that_stops_progressing_is_failed_and_retried_while_one_that_steps_is_not(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """failurePolicy.progressDeadlineSeconds: member 0 keeps writing heartbeats as a training process does;
    member 1 writes none. Member 1's Job is failed (its reason quoted) and retried; member 0 runs on."""
    doc = warprun(store, failurePolicy={"maxRetries": 1, "progressDeadlineSeconds": 3})
    stop = threading.Event()

    def beat() -> None:  # what trainer/outputs.py's Heartbeat writes
        key = store / layout.member_heartbeat(api.folder(), 0, 0)  # the run's own folder: default/demo/<uid>
        step = 0
        while not stop.is_set():
            key.parent.mkdir(parents=True, exist_ok=True)
            step += 1
            tmp = key.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step, "steps": 3, "time": time.time()}))
            tmp.replace(key)
            stop.wait(0.3)

    beater = threading.Thread(target=beat, daemon=True)
    try:
        with RunningOperator(cluster, options(resync_seconds=1)):
            api.create(doc)
            finish(api, runner, "demo-prepare")
            jobs_named(api, "demo-i0-m0", "demo-i0-m1")
            beater.start()
            retry = jobs_named(api, "demo-i0-m1-r1")
            assert retry["demo-i0-m1-r1"]["metadata"]["labels"]["kwarp.dev/attempt"] == "1"
            stalled_job = api.jobs()["demo-i0-m1"]
            assert stalled_job["metadata"]["annotations"]["kwarp.dev/stalled"].startswith("NoProgress: ")
            st = wait_value(api.status, lambda s: "i0-m1" in s.get("failures", {}), WAIT,
                            message=lambda: f"failures in status {api.status()}")
            reason = st["failures"]["i0-m1"]["reason"]
            assert "NoProgress: no training progress for " in reason
            assert "it has completed no step since the Job started" in reason
            posted(api, "NoProgress", "Warning", "demo-i0-m1")
            # Member 0 stepped all along: its Job is still the first attempt, running.
            assert "demo-i0-m0" in runner.running() and "demo-i0-m0-r1" not in api.jobs()
            assert "kwarp.dev/stalled" not in (api.jobs()["demo-i0-m0"]["metadata"].get("annotations") or {})
    finally:
        stop.set()
