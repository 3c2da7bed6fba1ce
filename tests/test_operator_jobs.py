"""Job manifests, table-driven: whole-dict comparisons of what the builder renders for each role and option."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kwarp.core.plan import Task
from kwarp.core.resources import PodResources
from kwarp.core.spec import WarpRun, parse
from kwarp.operator.jobs import WorkerSettings, job_manifest, with_defaults

from .test_spec import doc

UID = "0b6f8d2e-5c43-4e57-a3a4-3f0a3c1d2e11"
IMAGE = "registry.example/kwarp-worker:1.0"


def run(**patches: object) -> WarpRun:
    base = {"metadata": {"name": "gemma-warp", "namespace": "team-a"}}
    return parse({**doc(**patches), **base})


def spec_json(r: WarpRun) -> str:
    return json.dumps(r.to_document(), sort_keys=True, separators=(",", ":"))


SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def expected(
    r: WarpRun,
    *,
    name: str,
    component: str,
    task_labels: dict[str, str],
    command: list[str],
    args: list[str],
    resources: dict[str, Any] | None,
    gpu_volumes: bool,
    secret: str | None = "kwarp-s3",
    endpoint: str | None = "minio.minio:9000",
    attempt: int = 0,
    grace: int | None = None,
) -> dict[str, Any]:
    """The manifest written out by hand: what a reviewer expects a task's Job to be. A trainer's pod gets
    120 s between SIGTERM and SIGKILL unless `grace` says otherwise (it saves its state in them)."""
    if grace is None and component == "trainer":
        grace = 120
    labels = {
        "app.kubernetes.io/name": "kwarp",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "kwarp-operator",
        "kwarp.dev/run": "gemma-warp",
        **task_labels,
        "kwarp.dev/attempt": str(attempt),
    }
    env = [
        {"name": "KWARP_SPEC", "value": spec_json(r)},
        {"name": "KWARP_NAMESPACE", "value": "team-a"},
        {"name": "KWARP_METRICS_PORT", "value": "9400"},
        {"name": "HOME", "value": "/scratch"},
        {"name": "TMPDIR", "value": "/scratch"},
        {"name": "KWARP_CACHE", "value": "/scratch/cache"},
        {"name": "HF_HOME", "value": "/scratch/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if endpoint:
        env.append({"name": "KWARP_S3_ENDPOINT", "value": endpoint})
    if secret:
        env += [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}}},
        ]  # fmt: skip
    container: dict[str, Any] = {
        "name": component,
        "image": IMAGE,
        "command": command,
        "args": args,
        "env": env,
        "ports": [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]
        + ([{"name": "dshm", "mountPath": "/dev/shm"}] if gpu_volumes else []),
        "securityContext": SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources is not None:
        container["resources"] = resources
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "name": "gemma-warp", "uid": UID,
                 "controller": True, "blockOwnerDeletion": True}
            ],  # fmt: skip
        },
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [75]}, "onPodConditions": []},
            ]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "scratch", "emptyDir": {}}]
                    + ([{"name": "dshm", "emptyDir": {"medium": "Memory"}}] if gpu_volumes else []),
                    **({"terminationGracePeriodSeconds": grace} if grace is not None else {}),
                },
            },
        },
    }


def gpus(n: int, cpu: str | None = None, memory: str | None = None) -> dict[str, Any] | None:
    q: dict[str, str] = {}
    if cpu:
        q["cpu"] = cpu
    if memory:
        q["memory"] = memory
    if n:
        q["nvidia.com/gpu"] = str(n)
    return {"requests": q, "limits": dict(q)} if q else None


TRAIN_ARGS = ["train", "--iteration", "1", "--member", "0"]
MEMBER_LABELS = {"kwarp.dev/task": "i1-m0", "kwarp.dev/iteration": "1", "kwarp.dev/member": "0"}

CASES = [
    pytest.param(
        {"spec.resources": {"trainer": {"gpus": 0, "cpu": "4", "memory": "16Gi"}}},
        Task.train(1, 0), 0,
        dict(name="gemma-warp-i1-m0", component="trainer", task_labels=MEMBER_LABELS, command=["kwarp"],
             args=TRAIN_ARGS, resources=gpus(0, "4", "16Gi"), gpu_volumes=False),
        id="trainer-0-gpus",
    ),
    pytest.param(
        {}, Task.train(1, 0), 0,
        dict(name="gemma-warp-i1-m0", component="trainer", task_labels=MEMBER_LABELS, command=["kwarp"],
             args=TRAIN_ARGS, resources=gpus(1), gpu_volumes=True),
        id="trainer-1-gpu",
    ),
    pytest.param(
        {"spec.resources": {"trainer": {"gpus": 4, "cpu": "32", "memory": "256Gi"}}},
        Task.train(1, 0), 2,
        dict(name="gemma-warp-i1-m0-r2", component="trainer", task_labels=MEMBER_LABELS, command=["kwarp"],
             args=["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "4", "--module", "kwarp", *TRAIN_ARGS],
             resources=gpus(4, "32", "256Gi"), gpu_volumes=True, attempt=2),
        id="trainer-4-gpus-retry",
    ),
    pytest.param(
        {}, Task.merge(0), 0,
        dict(name="gemma-warp-i0-merge", component="merger",
             task_labels={"kwarp.dev/task": "i0-merge", "kwarp.dev/iteration": "0"}, command=["kwarp"],
             args=["merge", "--iteration", "0"], resources=None, gpu_volumes=False),
        id="merger",
    ),
    pytest.param(
        {}, Task.eval(2), 1,
        dict(name="gemma-warp-i2-eval-r1", component="evaluation",
             task_labels={"kwarp.dev/task": "i2-eval", "kwarp.dev/iteration": "2"}, command=["kwarp"],
             args=["eval", "--iteration", "2"], resources=gpus(1), gpu_volumes=True, attempt=1),
        id="evaluation",
    ),
    pytest.param(
        {}, Task.prepare(), 0,
        dict(name="gemma-warp-prepare", component="prepare", task_labels={"kwarp.dev/task": "prepare"},
             command=["kwarp"], args=["prepare"], resources=None, gpu_volumes=False),
        id="prepare-uses-merger-resources",
    ),
    pytest.param(
        {"spec.export": {"klBudget": 2.0, "to": "s3://kwarp/models/out"}}, Task.export(), 0,
        dict(name="gemma-warp-export", component="export", task_labels={"kwarp.dev/task": "export"},
             command=["kwarp"], args=["export"], resources=gpus(1), gpu_volumes=True),
        id="export-uses-evaluation-resources",
    ),
    pytest.param(
        {"spec.storage": {"url": "s3://kwarp/runs"}}, Task.merge(0), 0,
        dict(name="gemma-warp-i0-merge", component="merger",
             task_labels={"kwarp.dev/task": "i0-merge", "kwarp.dev/iteration": "0"}, command=["kwarp"],
             args=["merge", "--iteration", "0"], resources=None, gpu_volumes=False, secret=None, endpoint=None),
        id="without-secret-or-endpoint",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("patches", "task", "attempt", "want"), CASES)
def test_manifest(patches: dict, task: Task, attempt: int, want: dict) -> None:
    r = run(**patches)
    assert job_manifest(r, UID, task, attempt, WorkerSettings(image=IMAGE)) == expected(r, **want)


def test_termination_grace_period_from_the_spec_or_the_operator_or_the_role() -> None:
    """A trainer saves its state between SIGTERM and SIGKILL: the grace period is the run's, else the
    operator's default for the role, else 120 s for a trainer and Kubernetes' own for the others."""
    def grace(r: WarpRun, task: Task, worker: WorkerSettings) -> int | None:
        return job_manifest(r, UID, task, 0, worker)["spec"]["template"]["spec"].get("terminationGracePeriodSeconds")

    plain = WorkerSettings(image=IMAGE)
    r = run(**{"spec.resources": {"trainer": {"terminationGracePeriodSeconds": 600},
                                  "merger": {"terminationGracePeriodSeconds": 0}}})
    assert grace(r, Task.train(0, 0), plain) == 600
    assert grace(r, Task.merge(0), plain) == 0
    assert grace(run(), Task.train(0, 0), plain) == 120 and grace(run(), Task.eval(0), plain) is None
    defaults = WorkerSettings(image=IMAGE, defaults={"trainer": PodResources(termination_grace_period_seconds=240),
                                                     "evaluation": PodResources(termination_grace_period_seconds=45)})
    assert grace(run(), Task.train(0, 0), defaults) == 240 and grace(run(), Task.eval(0), defaults) == 45
    assert grace(r, Task.train(0, 0), defaults) == 600


def test_scheduling_fields_and_operator_settings() -> None:
    r = run(**{"spec.resources": {"trainer": {
        "gpus": 1,
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training",
        "serviceAccountName": "trainer-sa",
        "image": "registry.example/custom:2",
    }}})  # fmt: skip
    worker = WorkerSettings(
        image=IMAGE,
        service_account="kwarp-worker",
        ttl_seconds_after_finished=3600,
        image_pull_policy="IfNotPresent",
        env={"KWARP_S3_SECURE": "0", "KWARP_S3_ENDPOINT": "ignored-when-the-spec-has-one:9000"},
    )
    got = job_manifest(r, UID, Task.train(1, 0), 0, worker)

    want = expected(r, name="gemma-warp-i1-m0", component="trainer", task_labels=MEMBER_LABELS,
                    command=["kwarp"], args=TRAIN_ARGS, resources=gpus(1), gpu_volumes=True)  # fmt: skip
    want["spec"]["ttlSecondsAfterFinished"] = 3600
    pod = want["spec"]["template"]["spec"]
    pod["serviceAccountName"] = "trainer-sa"  # the run's service account wins over the operator's
    pod["priorityClassName"] = "training"
    pod["nodeSelector"] = {"nvidia.com/gpu.product": "H100"}
    pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    container = pod["containers"][0]
    container["image"] = "registry.example/custom:2"
    container["imagePullPolicy"] = "IfNotPresent"
    env = container["env"]
    at = next(i for i, e in enumerate(env) if e["name"] == "KWARP_S3_ENDPOINT")
    env[at:at + 1] = [{"name": "KWARP_S3_ENDPOINT", "value": "minio.minio:9000"}, {"name": "KWARP_S3_SECURE", "value": "0"}]
    assert got == want


def test_a_queued_run_labels_its_jobs_with_the_queue_and_creates_them_suspended() -> None:
    plain = job_manifest(run(), UID, Task.train(1, 0), 0, WorkerSettings(image=IMAGE))
    for r, worker, queue in [
        (run(**{"spec.queueName": "team-a-gpu"}), WorkerSettings(image=IMAGE), "team-a-gpu"),
        (run(), WorkerSettings(image=IMAGE, queue_name="shared"), "shared"),  # the operator's default
        (run(**{"spec.queueName": "team-a-gpu"}), WorkerSettings(image=IMAGE, queue_name="shared"), "team-a-gpu"),
    ]:
        got = job_manifest(r, UID, Task.train(1, 0), 0, worker)
        want = copy.deepcopy(plain)
        want["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = queue
        want["spec"]["suspend"] = True
        want["spec"]["template"]["spec"]["containers"][0]["env"] = got["spec"]["template"]["spec"]["containers"][0]["env"]
        assert got == want
        assert "kueue.x-k8s.io/queue-name" not in got["spec"]["template"]["metadata"]["labels"]  # the Job's, not pods'
    assert "suspend" not in plain["spec"]


def test_operator_defaults_fill_only_what_the_run_leaves_empty() -> None:
    defaults = {
        "trainer": PodResources.model_validate({
            "gpus": 8, "memory": "64Gi", "priorityClassName": "gpu-batch",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }),
        "merger": PodResources.model_validate({"cpu": "2", "memory": "8Gi"}),
    }  # fmt: skip
    worker = WorkerSettings(image=IMAGE, storage_secret="cluster-s3", defaults=defaults)
    r = run(**{"spec.resources": {"trainer": {"gpus": 2, "memory": "128Gi"}}, "spec.storage": {"url": "s3://kwarp/runs"}})

    trainer = job_manifest(r, UID, Task.train(0, 1), 0, worker)["spec"]["template"]["spec"]
    # The run's GPU count and memory win; the toleration and priority class come from the defaults.
    assert trainer["containers"][0]["resources"] == gpus(2, memory="128Gi")
    assert trainer["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert trainer["priorityClassName"] == "gpu-batch"

    merger = job_manifest(r, UID, Task.merge(0), 0, worker)["spec"]["template"]["spec"]["containers"][0]
    assert merger["resources"] == gpus(0, "2", "8Gi")
    # The run names no Secret: the operator's default one provides the credentials.
    assert {"name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "cluster-s3", "key": "AWS_ACCESS_KEY_ID"}}} in merger["env"]


def test_with_defaults_keeps_what_the_run_set() -> None:
    run_res = PodResources.model_validate({"gpus": 0, "cpu": "1", "tolerations": []})
    default = PodResources.model_validate({"gpus": 2, "cpu": "8", "memory": "4Gi",
                                           "tolerations": [{"key": "k", "operator": "Exists"}]})  # fmt: skip
    merged = with_defaults(run_res, default)
    assert (merged.gpus, merged.cpu, merged.memory) == (0, "1", "4Gi")  # the run's explicit 0 GPUs stays
    assert [t.key for t in merged.tolerations] == ["k"]
    assert with_defaults(run_res, None) is run_res


def test_operator_gpu_default_applies_where_the_run_states_no_count() -> None:
    """workers.defaults.<role>.gpus (Helm) was accepted and silently ignored: a CPU-only cluster's
    `trainer.gpus: 0` still asked every trainer pod for a GPU."""
    worker = WorkerSettings(image=IMAGE, defaults={"trainer": PodResources.model_validate({"gpus": 0}),
                                                   "evaluation": PodResources.model_validate({"gpus": 0})})  # fmt: skip
    silent = run(**{"spec.resources": {"trainer": {"cpu": "8"}}})
    assert silent.spec.resources.trainer.gpus == 1  # the role's default, unless the operator says otherwise
    trainer = job_manifest(silent, UID, Task.train(0, 0), 0, worker)["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in trainer["containers"][0]["resources"].get("limits", {})
    assert trainer["containers"][0]["resources"]["limits"]["cpu"] == "8"
    stated = run(**{"spec.resources": {"trainer": {"gpus": 2}}})
    limits = job_manifest(stated, UID, Task.train(0, 0), 0, worker)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"  # a count the run states wins over the operator's default


def test_spec_env_is_the_run_document_without_api_metadata() -> None:
    r = run()
    manifest = job_manifest(r, UID, Task.prepare(), 0, WorkerSettings(image=IMAGE))
    env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert parse(json.loads(env["KWARP_SPEC"])) == r


def test_names_fit_kubernetes_limits_for_the_longest_run_name() -> None:
    r = run()
    long = r.model_copy(update={"metadata": r.metadata.model_copy(update={"name": "a" * 40})})
    manifest = job_manifest(long, UID, Task.train(99, 63), 100, WorkerSettings(image=IMAGE))
    assert len(manifest["metadata"]["name"]) <= 63  # it becomes a pod label value (job-name)
    assert all(len(v) <= 63 for v in manifest["metadata"]["labels"].values())


def test_builder_is_pure() -> None:
    r = run()
    before = copy.deepcopy(r.to_document())
    a = job_manifest(r, UID, Task.train(0, 0), 0, WorkerSettings(image=IMAGE))
    b = job_manifest(r, UID, Task.train(0, 0), 0, WorkerSettings(image=IMAGE))
    assert a == b and a is not b and r.to_document() == before


# ------------------------------------------------------------------------------ multi-node members


def test_a_multi_node_member_is_an_indexed_job_whose_pods_rendezvous_through_a_headless_service() -> None:
    from kwarp.operator.jobs import needs_service, service_manifest

    worker = WorkerSettings(image=IMAGE)
    one = job_manifest(run(**{"spec.resources": {"trainer": {"gpus": 4}}}), UID, Task.train(1, 0), 2, worker)
    two = job_manifest(run(**{"spec.resources": {"trainer": {"gpus": 4, "nodes": 2}}}), UID, Task.train(1, 0), 2, worker)
    assert not needs_service(one) and needs_service(two)

    # The same Job as a one-node member's, but for what several pods need.
    want = copy.deepcopy(one)
    name = "gemma-warp-i1-m0-r2"
    want["spec"].update(completionMode="Indexed", completions=2, parallelism=2)
    pod = want["spec"]["template"]["spec"]
    pod["subdomain"] = name
    container = pod["containers"][0]
    container["command"], container["args"] = ["kwarp"], ["torchrun", "--module", "kwarp", *TRAIN_ARGS]
    container["ports"].append({"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"})
    # The spec in KWARP_SPEC differs by the node count only.
    env = {e["name"]: e for e in container["env"]}
    env["KWARP_SPEC"] = next(e for e in two["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "KWARP_SPEC")
    container["env"] = list(env.values()) + [
        {"name": "PET_NNODES", "value": "2"},
        {"name": "PET_NPROC_PER_NODE", "value": "4"},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": "29500"},
    ]  # fmt: skip
    assert json.loads(env["KWARP_SPEC"]["value"])["spec"]["resources"]["trainer"]["nodes"] == 2
    assert two == want

    labels = two["metadata"]["labels"]
    job_uid = "6c1f3a52-9d0e-4b7a-8e21-0d4c5b6a7f80"
    assert service_manifest(two, job_uid) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "team-a", "labels": labels, "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid, "controller": True}]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"kwarp.dev/run": "gemma-warp", "kwarp.dev/task": "i1-m0", "kwarp.dev/attempt": "2"},
                 "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}]},
    }  # fmt: skip
    # The Service selects exactly the pods of this attempt of this member.
    assert all(two["spec"]["template"]["metadata"]["labels"][k] == v
               for k, v in service_manifest(two, job_uid)["spec"]["selector"].items())


@pytest.mark.parametrize("role", ["merger", "evaluation"])
def test_only_the_trainer_spans_nodes(role: str) -> None:
    from kwarp.core.spec import SpecError

    with pytest.raises(SpecError, match=f"spec.resources.{role}.nodes: only the trainer"):
        run(**{"spec.resources": {role: {"nodes": 2}}})


# ------------------------------------------------------------------------------ a queued iteration's gang


def test_a_queued_iteration_trains_its_members_as_one_indexed_job() -> None:
    """One Indexed Job per iteration (one Kueue Workload for all M members): pod index = member, retries
    inside the Job (per pod), the gang's budget M x maxRetries; otherwise a member's Job, written out."""
    from kwarp.operator.jobs import gang_manifest, gang_name, gangs_members, is_gang

    patches = {"spec.queueName": "team-a-gpu", "spec.warp.policies": 3, "spec.failurePolicy": {"maxRetries": 2},
               "spec.resources": {"trainer": {"gpus": 2, "cpu": "16", "memory": "128Gi"}}}
    r = run(**patches)
    worker = WorkerSettings(image=IMAGE)
    got = gang_manifest(r, UID, 1, 4, worker)

    labels = {"kwarp.dev/task": "i1-members", "kwarp.dev/iteration": "1"}  # no member label: the index is
    want = expected(r, name="gemma-warp-i1-members-r4", component="trainer", task_labels=labels,
                    command=["kwarp"], args=["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
                                             "--module", "kwarp", "train", "--iteration", "1"],
                    resources=gpus(2, "16", "128Gi"), gpu_volumes=True, attempt=4)  # fmt: skip
    want["metadata"]["labels"] = {**want["metadata"]["labels"], "kueue.x-k8s.io/queue-name": "team-a-gpu"}  # not pods'
    want["spec"].update(suspend=True, completionMode="Indexed", completions=3, parallelism=3, backoffLimit=6)
    want["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "KWARP_MEMBER", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})  # fmt: skip
    assert got == want
    assert "subdomain" not in got["spec"]["template"]["spec"]  # no rendezvous between members: no Service
    assert is_gang(got) and not is_gang(job_manifest(r, UID, Task.train(1, 0), 0, worker))
    assert gang_name("gemma-warp", 1) == "gemma-warp-i1-members"

    # Only a queued run gangs its members; the operator's default queue counts.
    assert gangs_members(r.spec, worker)
    assert not gangs_members(run().spec, worker) and gangs_members(run().spec, WorkerSettings(image=IMAGE, queue_name="q"))
    one = gang_manifest(run(**{**patches, "spec.warp.policies": 2, "spec.failurePolicy": {"maxRetries": 0}}), UID, 0, 0, worker)
    assert (one["metadata"]["name"], one["spec"]["completions"], one["spec"]["backoffLimit"]) == ("gemma-warp-i0-members", 2, 0)


def test_a_queued_iteration_of_multi_node_members_is_one_indexed_job_of_m_times_n_pods() -> None:
    """M = 3 members of N = 2 nodes: one Indexed Job of 6 pods (one Kueue Workload), pod i is node i % 2 of
    member i // 2; every pod runs `kwarp gang-node`, which derives its member, node rank and rendezvous host
    from the index (kwarp.core.placement); one headless Service for the gang; backoffLimit 0 (a member
    restarts whole: its first failed rank fails the gang Job and the operator starts the next attempt)."""
    from kwarp.operator.jobs import gang_manifest, gangs_members, needs_service, nodes_of, service_manifest

    patches = {"spec.queueName": "team-a-gpu", "spec.warp.policies": 3, "spec.failurePolicy": {"maxRetries": 2},
               "spec.resources": {"trainer": {"gpus": 4, "nodes": 2, "cpu": "16", "memory": "128Gi"}}}
    r = run(**patches)
    worker = WorkerSettings(image=IMAGE)
    assert gangs_members(r.spec, worker)
    got = gang_manifest(r, UID, 1, 4, worker)

    name = "gemma-warp-i1-members-r4"
    labels = {"kwarp.dev/task": "i1-members", "kwarp.dev/iteration": "1"}
    want = expected(r, name=name, component="trainer", task_labels=labels, command=["kwarp"],
                    args=["gang-node", "train", "--iteration", "1"], resources=gpus(4, "16", "128Gi"),
                    gpu_volumes=True, attempt=4)  # fmt: skip
    want["metadata"]["labels"] = {**want["metadata"]["labels"], "kueue.x-k8s.io/queue-name": "team-a-gpu"}
    want["spec"].update(suspend=True, completionMode="Indexed", completions=6, parallelism=6, backoffLimit=0)
    pod = want["spec"]["template"]["spec"]
    pod["subdomain"] = name
    container = pod["containers"][0]
    container["ports"].append({"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"})
    container["env"] += [
        {"name": "KWARP_POD_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "KWARP_GANG_HOSTS", "value": f"{name}-{{index}}.{name}"},
        {"name": "PET_NNODES", "value": "2"},
        {"name": "PET_NPROC_PER_NODE", "value": "4"},
        {"name": "PET_MASTER_PORT", "value": "29500"},
    ]  # fmt: skip
    assert got == want
    assert nodes_of(got) == 2 and nodes_of(gang_manifest(run(**{**patches, "spec.resources": {}}), UID, 0, 0, worker)) == 1

    # One headless Service for the gang, selecting exactly this attempt's pods.
    assert needs_service(got)
    job_uid = "6c1f3a52-9d0e-4b7a-8e21-0d4c5b6a7f80"
    assert service_manifest(got, job_uid) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "team-a", "labels": got["metadata"]["labels"], "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid, "controller": True}]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"kwarp.dev/run": "gemma-warp", "kwarp.dev/task": "i1-members", "kwarp.dev/attempt": "4"},
                 "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}]},
    }  # fmt: skip
    # A gang of one-node members has none: its pods never talk to each other.
    assert not needs_service(gang_manifest(run(**{**patches, "spec.resources": {}}), UID, 0, 0, worker))


def test_a_queued_run_of_multi_node_members_is_accepted_when_its_names_fit() -> None:
    """The gang of multi-node members replaced the refusal: a queued run with nodes > 1 is valid; its pods'
    host names (<job>-<index>, last iteration, attempt M x maxRetries, index M x N - 1) must fit 63 characters
    and its Service's name (the Job's) must start with a letter."""
    from kwarp.operator.acceptance import cluster_problems

    multi = {"spec.resources": {"trainer": {"gpus": 8, "nodes": 2}}, "spec.storage": {"url": "s3://kwarp/runs"},
             "spec.warp.policies": 3, "spec.failurePolicy": {"maxRetries": 2}}  # fmt: skip
    assert cluster_problems(run(**multi).spec, "gemma-warp") == []
    assert cluster_problems(run(**multi, **{"spec.queueName": "team-a-gpu"}).spec, "gemma-warp") == []
    assert cluster_problems(run(**multi).spec, "gemma-warp", "shared") == []  # the operator's default queue

    queued = run(**multi, **{"spec.queueName": "team-a-gpu"}).spec
    fits = "a" * (63 - len("-i2-members-r6-5"))  # 3 iterations; 3 members x 2 retries: attempt 6; 3 x 2 pods: index 5
    assert cluster_problems(queued, fits) == []
    (problem,) = cluster_problems(queued, fits + "b")
    assert problem.startswith(f"  - metadata.name: '{fits}b' is too long") and f"'{fits}b-i2-members-r6-5'" in problem
    (problem,) = cluster_problems(queued, "7-warp")
    assert problem.startswith("  - metadata.name: '7-warp' cannot name the Service of its queued multi-node members")
    assert cluster_problems(run(**{**multi, "spec.resources": {}}, **{"spec.queueName": "q"}).spec, "7-warp") == []


def test_a_queued_run_whose_name_cannot_name_its_gang_pods_is_refused() -> None:
    """A gang pod's host name is <job>-<index>: at most 63 characters, for the last iteration, retry and member."""
    from kwarp.operator.acceptance import cluster_problems

    r = run(**{"spec.queueName": "team-a-gpu", "spec.warp.iterations": 10, "spec.warp.policies": 12,
               "spec.failurePolicy": {"maxRetries": 3}, "spec.storage": {"url": "s3://kwarp/runs"}})  # fmt: skip
    fits = "a" * (63 - len("-i9-members-r3-11"))
    assert cluster_problems(r.spec, fits) == []
    (problem,) = cluster_problems(r.spec, fits + "b")
    assert problem.startswith(f"  - metadata.name: '{fits}b' is too long") and f"'{fits}b-i9-members-r3-11', 64 characters" in problem
    assert cluster_problems(run(**{"spec.storage": {"url": "s3://kwarp/runs"}}).spec, fits + "b") == []  # not queued
