"""The operator against an API server: kopf runs in-process, talking HTTP to tests/kube.py's emulator.

A test-side Job controller (StatusJobRunner) stands in for the cluster: the tests do each Job's work
by writing the task's outputs into a file:// store (tiny safetensors checkpoints with manifests,
eval.json fronts), then mark the Job complete or failed through its status subresource. Unless a
test says otherwise the operator's resync timer is set far out, so every step here is driven by
watch events alone.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kwarp.core.crd import crd
from kwarp.core.plan import Task
from kwarp.operator import conditions as C
from kwarp.operator.app import build
from kwarp.operator.jobs import LABEL_RUN, WorkerSettings

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for, wait_value
from .operator_harness import (
    GROUP,
    IMAGE,
    NS,
    PLURAL,
    ROOT,
    VERSION,
    WAIT,
    Api,
    completes,
    finish,
    job_run,
    jobs_named,
    options,
    phase_is,
    posted,
    warprun,
    write_outputs,
)

# ------------------------------------------------------------------ the API server the operator meets


def test_the_emulator_behaves_like_an_api_server(api: Api) -> None:
    """What the operator relies on: server-side fields, 409, the status subresource, quiet no-op patches,
    label selectors, garbage collection and the Jobs' REST default of orphaning their pods."""
    merge = "application/merge-patch+json"
    body = warprun(Path("/runs"), name="x")
    run = api.create({**body, "status": {"phase": "Made up"}})
    meta = run["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1 and "status" not in run
    assert run["spec"]["cleanup"] == "Retain"  # the CRD schema's default, filled in by the server
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        api.create(body)
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "AlreadyExists"

    patched = api.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "x", {"status": {"phase": "Training"}, "spec": {"suspend": True}}, _content_type=merge)
    assert patched["status"]["phase"] == "Training" and patched["spec"]["suspend"] is False
    assert patched["metadata"]["generation"] == 1 and int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    again = api.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "x", {"status": {"phase": "Training"}}, _content_type=merge)
    assert again["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]  # no-op: no new version
    spec_patch = api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "x", {"spec": {"suspend": True}, "status": {"phase": "Lost"}}, _content_type=merge)
    assert spec_patch["metadata"]["generation"] == 2 and spec_patch["status"]["phase"] == "Training"

    def job(name: str, labels: dict[str, str], owner: dict[str, Any] | None) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "labels": labels, **({"ownerReferences": [owner]} if owner else {})},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}  # fmt: skip

    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WarpRun", "name": "x", "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    api.batch.create_namespaced_job(NS, job("x-a", {LABEL_RUN: "x"}, owner))
    made = api.batch.create_namespaced_job(NS, job("other", {LABEL_RUN: "y"}, None))
    assert sorted(api.jobs("x")) == ["x-a"]
    pod_owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "other", "uid": made.metadata.uid, "controller": True}
    api.core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                        "metadata": {"name": "other-pod", "ownerReferences": [pod_owner]},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}})  # fmt: skip

    api.batch.delete_namespaced_job("other", NS)  # no propagationPolicy: Jobs orphan their pods
    orphan = api.core.read_namespaced_pod("other-pod", NS)
    assert orphan.metadata.owner_references is None

    api.delete("x")  # Background: its Job goes with it
    assert api.get("x") is None and api.jobs("x") == {}
    for call in (lambda: api.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "x"),
                 lambda: api.patch_spec({"suspend": False}, "x"),
                 lambda: api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "x")):  # fmt: skip
        with pytest.raises(kubernetes.client.ApiException) as missing:
            call()
        gone = json.loads(missing.value.body)  # the Status a real API server sends
        assert (missing.value.status, gone["reason"], gone["message"]) == (404, "NotFound", 'warpruns.kwarp.dev "x" not found')
        assert gone["details"] == {"name": "x", "group": "kwarp.dev", "kind": "warpruns"}


# ------------------------------------------------------------------ the lifecycle


def test_a_run_goes_through_prepare_members_merge_eval_to_succeeded(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    created = api.create(warprun(store))
    uid = created["metadata"]["uid"]

    prepare = jobs_named(api, "demo-prepare")["demo-prepare"]
    run, task = job_run(prepare)
    assert task == Task.prepare() and run.name == "demo" and run.spec.warp.iterations == 2
    assert prepare["metadata"]["ownerReferences"] == [{"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun",
                                                       "name": "demo", "uid": uid, "controller": True,
                                                       "blockOwnerDeletion": True}]  # fmt: skip
    container = prepare["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["command"], container["args"]) == (IMAGE, ["kwarp"], ["prepare"])
    assert phase_is(api, "Pending")["membersDone"] == "0/2"

    finish(api, runner, "demo-prepare")
    members = jobs_named(api, "demo-i0-m0", "demo-i0-m1")
    assert members["demo-i0-m0"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "train", "--iteration", "0", "--member", "0"]
    assert phase_is(api, "Training")["iteration"] == 0

    finish(api, runner, "demo-i0-m0")
    wait_for(lambda: api.status().get("membersDone") == "1/2", WAIT, message="one member done")
    assert "demo-i0-merge" not in api.jobs()  # the merge waits for every member

    finish(api, runner, "demo-i0-m1")
    jobs_named(api, "demo-i0-merge")
    assert phase_is(api, "Merging")["membersDone"] == "2/2"

    finish(api, runner, "demo-i0-merge")
    # Evaluation of iteration 0 runs beside the training of iteration 1.
    jobs_named(api, "demo-i0-eval", "demo-i1-m0", "demo-i1-m1")
    finish(api, runner, "demo-i0-eval")
    st = wait_value(api.status, lambda s: s.get("pareto"), WAIT, message="the first front")
    assert (st["reward"], st["kl"]) == (0.5, 1.5)  # iteration 0's front at η = litiEta = 0.3

    finish(api, runner, "demo-i1-m0", "demo-i1-m1")
    finish(api, runner, "demo-i1-merge")
    finish(api, runner, "demo-i1-eval")
    st = phase_is(api, "Succeeded")

    assert (st["iteration"], st["membersDone"], st["observedGeneration"]) == (2, "2/2", 1)
    assert (st["reward"], st["kl"]) == (0.6, 3.0)  # iteration 1's front at η = 0.3
    assert [[(p["eta"], p["reward"], p["kl"]) for p in f["points"]] for f in st["pareto"]] == [
        [(0.0, 0.2, 0.0), (0.3, 0.5, 1.5), (1.0, 1.2, 5.0)],
        [(0.0, 0.3, 0.0), (0.3, 0.6, 3.0), (1.0, 1.3, 10.0)],
    ]
    root = f"file://{store}/{api.folder()}"  # the run's own folder: default/demo/<uid>
    assert st["checkpoints"] == {
        "base": f"{root}/base",
        "iter-0/slerp": f"{root}/iter-0/slerp",
        "iter-1/init": f"{root}/iter-1/init",
        "iter-1/slerp": f"{root}/iter-1/slerp",
        "final": f"{root}/iter-1/slerp",
    }
    m = {(x["iteration"], x["member"]): x for x in st["members"]}
    assert set(m) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert (m[1, 1]["job"], m[1, 1]["state"], m[1, 1]["attempts"], m[1, 1]["reward"], m[1, 1]["kl"]) == (
        "demo-i1-m1", "Succeeded", 1, 0.61, 4.0)  # from eval.json's members
    assert m[0, 0]["startTime"] and m[0, 0]["completionTime"]
    assert st["startTime"] <= st["completionTime"]
    ready = api.condition(C.READY)
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "Succeeded")

    # One Job per task, created in dependency order, and none of them touched by kopf's bookkeeping.
    jobs = api.jobs()
    assert sorted(jobs) == sorted(f"demo-{t}" for t in ["prepare", "i0-m0", "i0-m1", "i0-merge", "i0-eval",
                                                        "i1-m0", "i1-m1", "i1-merge", "i1-eval"])  # fmt: skip
    assert runner.started.index("demo-i0-merge") > max(runner.started.index(n) for n in ("demo-i0-m0", "demo-i0-m1"))
    for job in jobs.values():
        assert not job["metadata"].get("finalizers"), job["metadata"]
        assert not any(k.startswith(("kopf.", "kwarp.dev/")) for k in job["metadata"].get("annotations", {}))

    # The typed client deserializes the Jobs (owner references carry the run's uid).
    typed = api.batch.list_namespaced_job(NS, label_selector=f"{LABEL_RUN}=demo")
    assert {j.metadata.owner_references[0].uid for j in typed.items} == {uid}

    posted(api, "Succeeded", "Normal")  # the last Event asked for: every Event before it is posted too
    # One Event per pass that changed the phase or created Jobs, naming the Jobs it created: an iteration's
    # members share theirs, the merge's completion starts the evaluation and the next iteration's members
    # in one pass, and each pass that creates Jobs also moves the phase (9 Jobs, 7 Events).
    events = [(reason, message) for _, reason, message in api.events()]
    assert [r for r, _ in events] == ["Pending", "Training", "Merging", "Training", "Merging", "Evaluating",
                                      "Succeeded"], events  # fmt: skip
    assert ("Pending -> Training: iteration 0 of 2 (0-based): 0/2 members trained; "
            "created Jobs demo-i0-m0 (trainer i0-m0), demo-i0-m1 (trainer i0-m1)") in [m for _, m in events]  # fmt: skip
    assert sorted(n for _, m in events for n in re.findall(r"demo-[a-z0-9-]+(?= \()", m)) == sorted(jobs)

    # Level-triggered but quiet: a reconcile that finds nothing new writes nothing (the status the API
    # server stored, with its schema defaults filled in, reads back as unchanged). The passes are run here,
    # to their end, by a reconciler with the operator's settings (reading by GET and LIST), the operator
    # stopped: a pass it would run on the next event could still be waiting when a fixed sleep ends (a
    # loaded machine) and prove nothing. A new reconciler's first pass reads the run's metrics from the
    # store (status.progress.updatedAt may move on to this second); its second finds nothing new.
    operator.__exit__(None, None, None)
    _, reconciler = build(options(), configuration=api.cluster.configuration)
    reconciler.runs = reconciler.job_index = None  # no watch feeds this one
    assert reconciler.reconcile(NS, "demo") is not None
    rv = api.get()["metadata"]["resourceVersion"]  # type: ignore[index]
    outcome = reconciler.reconcile(NS, "demo")
    assert outcome is not None and (outcome.phase, outcome.actions, outcome.status_patched) == ("Succeeded", [], False)
    assert api.get()["metadata"]["resourceVersion"] == rv  # type: ignore[index]


def test_a_failed_member_is_retried_then_fails_the_run_with_the_reason(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    api.create(warprun(store))
    finish(api, runner, "demo-prepare")
    jobs_named(api, "demo-i0-m0", "demo-i0-m1")
    wait_for(lambda: "demo-i0-m1" in runner.running(), WAIT, message="i0-m1 running")
    runner.fail("demo-i0-m1", exit_code=137, message="Killed\nCUDA out of memory. Tried to allocate 2.00 GiB")

    retry = jobs_named(api, "demo-i0-m1-r1")["demo-i0-m1-r1"]
    assert retry["metadata"]["labels"]["kwarp.dev/attempt"] == "1"
    wait_for(lambda: "demo-i0-m1-r1" in runner.running(), WAIT, message="the retry running")
    member = wait_for(lambda: next((m for m in api.status().get("members", []) if m["member"] == 1
                                    and m.get("job") == "demo-i0-m1-r1"), None), WAIT, message="retry in status")  # fmt: skip
    assert member["attempts"] == 2

    runner.fail("demo-i0-m1-r1", exit_code=137, message="CUDA out of memory. Tried to allocate 2.00 GiB")
    st = phase_is(api, "Failed")
    failed = api.condition(C.FAILED)
    assert failed is not None and failed["status"] == "True" and failed["reason"] == C.TASK_FAILED
    assert failed["message"].startswith("i0-m1 failed 2 times (failurePolicy.maxRetries=1): Job demo-i0-m1-r1 ")
    assert "BackoffLimitExceeded" in failed["message"]
    assert "container trainer exited with code 137 (Error): CUDA out of memory" in failed["message"]
    assert st["failures"]["i0-m1"]["count"] == 2
    posted(api, "Failed", "Warning")
    assert "demo-i0-m1-r2" not in api.jobs()

    # Retries are a safe field: allowing one more resumes the run where it stopped.
    api.patch_spec({"failurePolicy": {"maxRetries": 2}})
    jobs_named(api, "demo-i0-m1-r2")
    phase_is(api, "Training")
    assert api.condition(C.FAILED)["status"] == "False"  # type: ignore[index]


def test_a_multi_node_member_is_an_indexed_job_with_a_headless_service_that_goes_with_it(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    def services() -> dict[str, dict[str, Any]]:
        items = api.cluster.raw("GET", f"/api/v1/namespaces/{NS}/services")["items"]
        return {s["metadata"]["name"]: s for s in items}

    api.create(warprun(store, resources={"trainer": {"gpus": 2, "nodes": 2}}))
    finish(api, runner, "demo-prepare")
    jobs = jobs_named(api, "demo-i0-m0", "demo-i0-m1")
    have = wait_value(services, lambda s: {"demo-i0-m0", "demo-i0-m1"} <= set(s), WAIT,
                      message=lambda: f"the members' Services; have {sorted(services())}")  # fmt: skip
    assert "completionMode" not in jobs["demo-prepare"]["spec"] and "demo-prepare" not in have  # members only
    for name in ("demo-i0-m0", "demo-i0-m1"):
        job = jobs[name]
        assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
        assert job["spec"]["template"]["spec"]["subdomain"] == name
        svc = have[name]
        assert svc["spec"]["clusterIP"] == "None"
        assert [(o["kind"], o["uid"]) for o in svc["metadata"]["ownerReferences"]] == [("Job", job["metadata"]["uid"])]

    # A failed member is retried as a whole: a new Indexed Job with its own Service.
    wait_for(lambda: "demo-i0-m1" in runner.running(), WAIT, message="i0-m1 running")
    runner.fail("demo-i0-m1", exit_code=1, message="torch.distributed: rendezvous lost")
    jobs_named(api, "demo-i0-m1-r1")
    wait_for(lambda: "demo-i0-m1-r1" in services(), WAIT, message="the retry's Service")
    # The failed attempt's Service goes with its Job (garbage collection through the owner reference).
    api.batch.delete_namespaced_job("demo-i0-m1", NS, propagation_policy="Background")
    wait_for(lambda: "demo-i0-m1" not in services(), WAIT, message="the failed attempt's Service collected")
    assert {"demo-i0-m0", "demo-i0-m1-r1"} <= set(services())

    # Observed as one task each: when both members are done, the iteration merges.
    finish(api, runner, "demo-i0-m0", "demo-i0-m1-r1")
    jobs_named(api, "demo-i0-merge")


def test_a_restarted_operator_restores_a_missing_member_service(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """An operator stopped between creating a multi-node Job and its Service: the next one creates it."""
    def services() -> dict[str, dict[str, Any]]:
        items = api.cluster.raw("GET", f"/api/v1/namespaces/{NS}/services")["items"]
        return {s["metadata"]["name"]: s for s in items}

    with RunningOperator(cluster, options()):
        api.create(warprun(store, resources={"trainer": {"nodes": 2}}))
        finish(api, runner, "demo-prepare")
        jobs = jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        wait_for(lambda: {"demo-i0-m0", "demo-i0-m1"} <= set(services()), WAIT, message="the members' Services")
    api.core.delete_namespaced_service("demo-i0-m1", NS)  # as if the operator had stopped before creating it
    assert "demo-i0-m1" not in services()

    with RunningOperator(cluster, options()):
        svc = wait_value(services, lambda s: "demo-i0-m1" in s, WAIT, message="the Service restored")["demo-i0-m1"]
    assert svc["metadata"]["ownerReferences"][0]["uid"] == jobs["demo-i0-m1"]["metadata"]["uid"]
    assert sorted(api.jobs()) == ["demo-i0-m0", "demo-i0-m1", "demo-prepare"]  # nothing else was started


def test_suspend_holds_running_jobs_and_resume_releases_them(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    api.create(warprun(store))
    finish(api, runner, "demo-prepare")
    jobs_named(api, "demo-i0-m0", "demo-i0-m1")

    api.patch_spec({"suspend": True})
    wait_for(lambda: all(j["spec"].get("suspend") for n, j in api.jobs().items() if "-i0-m" in n), WAIT,
             message="member Jobs suspended")  # fmt: skip
    phase_is(api, "Suspended")
    assert api.condition(C.SUSPENDED)["status"] == "True"  # type: ignore[index]
    wait_for(lambda: not runner.running(), WAIT, message="the runner stopped the pods")

    api.patch_spec({"suspend": False})
    wait_for(lambda: not any(j["spec"].get("suspend") for j in api.jobs().values()), WAIT, message="Jobs resumed")
    phase_is(api, "Training")
    assert api.condition(C.SUSPENDED)["status"] == "False"  # type: ignore[index]
    finish(api, runner, "demo-i0-m0", "demo-i0-m1")
    jobs_named(api, "demo-i0-merge")


def test_a_restarted_operator_creates_no_duplicate_jobs(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    with RunningOperator(cluster, options()):
        api.create(warprun(store))
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        phase_is(api, "Training")

    # While no operator runs, one member finishes.
    finish(api, runner, "demo-i0-m0")
    before = {n: j["metadata"]["uid"] for n, j in api.jobs().items()}

    with RunningOperator(cluster, options()):
        wait_for(lambda: api.status().get("membersDone") == "1/2", WAIT, message="the restarted operator caught up")
        assert {n: j["metadata"]["uid"] for n, j in api.jobs().items()} == before  # same Jobs, nothing new
        finish(api, runner, "demo-i0-m1")
        jobs_named(api, "demo-i0-merge")

    # A third start with everything replayed (initial listing = an event for every Job): still one each.
    with RunningOperator(cluster, options()):
        finish(api, runner, "demo-i0-merge")
        jobs_named(api, "demo-i0-eval", "demo-i1-m0", "demo-i1-m1")
    assert sorted(runner.started) == sorted(set(runner.started))
    assert sorted(api.jobs()) == sorted(["demo-prepare", "demo-i0-m0", "demo-i0-m1", "demo-i0-merge",
                                         "demo-i0-eval", "demo-i1-m0", "demo-i1-m1"])  # fmt: skip


def test_delete_with_cleanup_delete_removes_jobs_pods_and_checkpoints(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    api.create(warprun(store, cleanup="Delete"))
    finish(api, runner, "demo-prepare")
    jobs_named(api, "demo-i0-m0", "demo-i0-m1")
    wait_for(lambda: len(runner.running()) == 2, WAIT, message="members running")
    folder = api.folder()
    assert (store / folder / "base" / "MANIFEST.json").is_file()
    assert api.get()["metadata"]["finalizers"] == ["kwarp.dev/finalizer"]  # type: ignore[index]

    api.delete()
    wait_for(lambda: api.get() is None, WAIT, message="the WarpRun gone")
    assert api.jobs() == {}
    pods = api.cluster.raw("GET", f"/api/v1/namespaces/{NS}/pods")["items"]
    assert pods == []  # Foreground deletion took the pods first
    assert not (store / folder).exists() and store.exists()
    posted(api, "CheckpointsDeleted")


def test_delete_removes_the_runs_pushgateway_groups(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path, tmp_path: Path
) -> None:
    """The Pushgateway keeps every group until it is deleted: a deleted run's series would stay on the
    dashboard for ever. Against the real Pushgateway; only this run's groups (not a same-named run of
    another namespace, not another run) go."""
    from prometheus_client import CollectorRegistry

    from kwarp.observability import telemetry
    from kwarp.observability.metrics import TrainerMetrics, member_labels

    from .prom import Pushgateway

    gw = Pushgateway.start(tmp_path)
    try:
        for ns, run, m in ((NS, "demo", 0), (NS, "demo", 1), (NS, "other", 0), ("elsewhere", "demo", 0)):
            registry = CollectorRegistry()  # one per task, as in a pod: another member's series would be refused
            TrainerMetrics.create(registry).step.labels(**member_labels(ns, run, 0, m)).set(1)
            assert telemetry.Pusher(gw.address, registry, telemetry.grouping_key("trainer", ns, run, 0, m)).push()
        assert len(gw.groups()) == 4
        worker = WorkerSettings(image=IMAGE, env={"KWARP_PUSHGATEWAY": gw.address})
        with RunningOperator(cluster, options(worker=worker)):
            api.create(warprun(store))
            finish(api, runner, "demo-prepare")
            jobs_named(api, "demo-i0-m0", "demo-i0-m1")
            api.delete()
            wait_for(lambda: api.get() is None, WAIT, message="the WarpRun gone")
            left = wait_value(lambda: sorted((g["labels"]["namespace"], g["labels"]["run"]) for g in gw.groups()),
                              lambda groups: len(groups) == 2, WAIT, message="the run's groups deleted")
        assert left == [(NS, "other"), ("elsewhere", "demo")]
    finally:
        gw.stop()


def test_delete_with_retain_keeps_checkpoints_and_collects_jobs(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    api.create(warprun(store))
    finish(api, runner, "demo-prepare")
    jobs_named(api, "demo-i0-m0", "demo-i0-m1")
    folder = api.folder()

    api.delete()
    wait_for(lambda: api.get() is None and not api.jobs(), WAIT, message="the WarpRun and its Jobs gone")
    assert (store / folder / "base" / "MANIFEST.json").is_file()


def test_an_invalid_spec_gets_a_condition_naming_the_field_and_no_jobs(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    # What the CRD schema cannot express (the API server prunes unknown fields and rejects bad types):
    # rules across fields, and locations that mean nothing in a pod.
    doc = warprun(store, training={"batchSize": 6, "microBatchSize": 4})
    doc["spec"]["data"]["train"] = "data/train.jsonl"
    api.create(doc)
    phase_is(api, "Failed")
    invalid = api.condition(C.INVALID)
    assert invalid is not None and (invalid["status"], invalid["reason"]) == ("True", C.INVALID_SPEC)
    assert "spec.training.microBatchSize (4) must divide spec.training.batchSize (6)" in invalid["message"]
    assert api.jobs() == {}
    posted(api, "InvalidSpec", "Warning")

    api.patch_spec({"training": {"microBatchSize": 2}})
    relative = wait_value(lambda: api.condition(C.INVALID), lambda c: "spec.data.train" in c["message"], WAIT,
                          message="the next problem named")
    assert relative["message"].endswith("use s3://bucket/key (or an absolute path that every pod mounts)")
    assert api.jobs() == {}

    # Fixed: accepted, and the run starts.
    api.patch_spec({"data": {"train": "/data/train.jsonl"}})
    jobs_named(api, "demo-prepare")
    assert api.condition(C.INVALID)["status"] == "False"  # type: ignore[index]


def test_an_unsafe_spec_change_is_refused_and_the_run_goes_on(
    api: Api, runner: StatusJobRunner, operator: RunningOperator, store: Path
) -> None:
    api.create(warprun(store))
    finish(api, runner, "demo-prepare")
    jobs_named(api, "demo-i0-m0", "demo-i0-m1")

    api.patch_spec({"warp": {"iterations": 3, "policies": 2, "steps": 3}, "training": {"learningRate": 0.1}})
    refused = wait_value(lambda: api.condition(C.SPEC_CHANGE_REFUSED), lambda c: c and c["status"] == "True", WAIT,
                         message="SpecChangeRefused")
    assert refused["message"].startswith("spec.warp, spec.training changed")
    assert api.status()["acceptedSpec"]["warp"]["iterations"] == 2
    assert api.get()["metadata"]["generation"] == 2  # type: ignore[index]
    assert api.status()["observedGeneration"] == 2

    finish(api, runner, "demo-i0-m0", "demo-i0-m1")
    finish(api, runner, "demo-i0-merge")
    merged = jobs_named(api, "demo-i1-m0")["demo-i1-m0"]
    assert job_run(merged)[0].spec.warp.iterations == 2  # new Jobs get the accepted spec

    api.patch_spec({"warp": {"iterations": 2, "policies": 2, "steps": 3}, "training": {"learningRate": None}})
    wait_for(lambda: api.condition(C.SPEC_CHANGE_REFUSED)["status"] == "False", 10,  # type: ignore[index]
             message="the refusal lifted once reverted")


def test_auto_completing_runs_succeed_in_parallel(cluster: Cluster, api: Api, store: Path) -> None:
    with StatusJobRunner(cluster, completes) as runner, RunningOperator(cluster, options()):
        for name in ("run-a", "run-b", "run-c"):
            api.create(warprun(store, name=name))
        for name in ("run-a", "run-b", "run-c"):
            phase_is(api, "Succeeded", name)
            assert len(api.jobs(name)) == 9
    assert not runner.errors


def test_metrics_and_liveness_endpoints(cluster: Cluster, api: Api, store: Path) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    opts = options(metrics_port=ports[0], liveness_port=ports[1], bind_address="127.0.0.1")
    with StatusJobRunner(cluster, completes), RunningOperator(cluster, opts):
        api.create(warprun(store))
        phase_is(api, "Succeeded")

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5).read().decode()

        text = wait_value(scrape, lambda t: 'kwarp_run_phase{namespace="default",phase="Succeeded",run="demo"} 1.0' in t,
                          10, message="the run's phase in /metrics")
        assert 'kwarp_operator_jobs_created_total{kind="train"} 4.0' in text
        assert 'kwarp_operator_jobs_created_total{kind="prepare"} 1.0' in text
        assert 'kwarp_operator_runs{namespace="default",phase="Succeeded"} 1.0' in text
        assert "kwarp_operator_reconcile_duration_seconds_count" in text
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/healthz", timeout=5).read())
        assert "seconds_since_last_reconcile" in health["reconciles"]


def test_the_timer_reconciles_when_an_event_is_missed(cluster: Cluster, api: Api, store: Path) -> None:
    """The Job watch is the fast path; the resync timer is the safety net (here: a Job stays Pending)."""
    with StatusJobRunner(cluster) as runner, RunningOperator(cluster, options(resync_seconds=1)):
        api.create(warprun(store))
        job = jobs_named(api, "demo-prepare")["demo-prepare"]
        wait_for(lambda: "demo-prepare" in runner.running(), WAIT, message="prepare running")
        # The outputs appear in the store without any change to a Job or the WarpRun: only the timer can see it.
        write_outputs(job)
        wait_for(lambda: api.status().get("phase") == "Training", WAIT, message="the timer's reconcile")


def test_peering_with_the_shipped_crds(tmp_path: Path, store: Path) -> None:
    peering_crds = [d for d in yaml.safe_load_all((ROOT / "operator" / "peering_crds.yaml").read_text()) if d]
    chart_copy = ROOT / "charts" / "kwarp" / "crds" / "kopf-peering.yaml"
    assert [d for d in yaml.safe_load_all(chart_copy.read_text()) if d] == peering_crds

    with Cluster(tmp_path, crds=[crd(), *peering_crds]) as cluster:
        cluster.raw("POST", f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings",
                    {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kwarp"}})  # fmt: skip
        api = Api(cluster)
        with StatusJobRunner(cluster, completes), RunningOperator(cluster, options(standalone=None, peering="kwarp")):
            api.create(warprun(store))
            phase_is(api, "Succeeded")
            peering = cluster.raw("GET", f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/kwarp")
            assert len(peering.get("status") or {}) == 1  # this operator's keep-alive
