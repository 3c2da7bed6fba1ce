"""Job manifests for the tasks of a WarpRun: pure functions from (run, task, attempt, settings) to plain dicts.

One Job per task attempt, named `task.job_name(run, attempt)` so that creating it twice is a no-op
(409 AlreadyExists). The Job is owned by the WarpRun (controller owner reference), so deleting the run
garbage-collects its Jobs and their pods. The container runs the task command `kwarp <task argv>`
(the image's entrypoint is kwarp; with more than one GPU per trainer, `torchrun --module kwarp`)
and reads the WarpRun from $KWARP_SPEC.

Pods run as a non-root user with a read-only root file system; everything a task writes locally
(the S3 checkpoint cache, HOME, TMPDIR) lives on a scratch emptyDir mounted at /scratch, and GPU
pods get a memory-backed /dev/shm (NCCL and data loaders need more than the runtime's 64 MiB).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kwarp.core.placement import HOSTS_ENV, INDEX_ENV, NODES_ENV, hosts_pattern
from kwarp.core.plan import Task
from kwarp.core.resources import PodResources
from kwarp.core.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    MEMBER_ENV,
    SPEC_ENV,
    WarpRun,
    WarpRunSpec,
)
from kwarp.store.fencing import FENCED_EXIT_CODE

# Labels on every Job and pod. The run label is how the operator finds a run's Jobs.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = f"{API_GROUP}/run"
LABEL_TASK = f"{API_GROUP}/task"
LABEL_ITERATION = f"{API_GROUP}/iteration"
LABEL_MEMBER = f"{API_GROUP}/member"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
# Kueue (kueue.sigs.k8s.io/docs/tasks/run/jobs): a Job labelled with a LocalQueue is a Kueue workload. Kueue's
# webhook would suspend it on creation anyway; it is created suspended so that no pod can start in the
# moment before Kueue's webhook or controller sees it (and so the manifest says what happens).
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Set by the operator on a Job it failed for making no progress (operator/watchdog.py): the reason.
ANNOTATION_STALLED = f"{API_GROUP}/stalled"
APP_NAME = "kwarp"
MANAGED_BY = "kwarp-operator"

COMPONENTS = {"prepare": "prepare", "train": "trainer", "merge": "merger", "eval": "evaluation", "export": "export"}

SCRATCH = "/scratch"
METRICS_PORT_NAME = "metrics"
# A multi-node member: pod 0 of the Indexed Job hosts torchrun's static rendezvous on this port.
RENDEZVOUS_PORT_NAME = "rendezvous"
RENDEZVOUS_PORT = 29500
# Where Kubernetes puts an Indexed Job pod's index (also in $JOB_COMPLETION_INDEX, and a label from 1.28).
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX = f"metadata.annotations['{COMPLETION_INDEX_KEY}']"
RUN_AS_USER = 1000
# S3 credentials a worker reads from the run's Secret (the names the AWS SDKs and kwarp's S3 store read).
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class WorkerSettings:
    """Operator-wide settings of the Jobs it creates (flags / env of `kwarp operator`)."""

    image: str
    service_account: str | None = None  # spec.resources.<role>.serviceAccountName wins
    ttl_seconds_after_finished: int | None = None
    metrics_port: int = 9400
    storage_secret: str | None = None  # used when spec.storage.secretName is unset
    image_pull_policy: str | None = None
    # Per role (trainer, merger, evaluation): pod settings for the fields a WarpRun leaves out.
    defaults: Mapping[str, PodResources] = field(default_factory=dict)
    # Environment every task container gets (the S3 settings the operator itself was given).
    env: Mapping[str, str] = field(default_factory=dict)
    # Kueue LocalQueue of every Job whose WarpRun names none (spec.queueName wins); None: no Kueue.
    queue_name: str | None = None


def queue_of(spec: WarpRunSpec, worker: WorkerSettings) -> str | None:
    """The Kueue LocalQueue a run's Jobs are submitted to, or None when Kueue does not manage them."""
    return spec.queue_name or worker.queue_name or None


def queue_label(job: Mapping[str, Any]) -> str | None:
    """The LocalQueue a Job was submitted to (None: not a Kueue workload)."""
    return ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_KUEUE_QUEUE)


def role(task: Task) -> str:
    """The spec.resources entry of a task: merge and prepare run with the merger's (CPU) settings; the export
    with the evaluation's (it evaluates the policy it writes)."""
    return {"train": "trainer", "eval": "evaluation", "export": "evaluation"}.get(task.kind, "merger")


# Pod settings the operator's per-role defaults may fill, where the run leaves them empty (`gpus` is
# handled apart in with_defaults: it has no schema default, and the spec fills in the role's own).
DEFAULTABLE = ("image", "cpu", "memory", "node_selector", "tolerations", "priority_class_name", "service_account_name",
               "termination_grace_period_seconds", "ephemeral_storage", "scratch_size_limit",
               "active_deadline_seconds")  # fmt: skip
# A trainer's SIGTERM handler saves its state at the end of the current step (trainer/signals.py): the
# Kubernetes default of 30 s is short for a step plus an upload of a large model's state.
ROLE_GRACE_SECONDS = {"trainer": 120}


def with_defaults(res: PodResources, default: PodResources | None) -> PodResources:
    """A WarpRun's pod settings over the operator's defaults: a field the run leaves empty (null, {} or [])
    takes the default. Emptiness, not presence, decides: the API server materialises the schema's
    defaults, so every field of a stored WarpRun is present. `gpus` has no schema default: a count the
    run did not state (the spec filled in the role's own default) gives way to the operator's, so a
    CPU-only cluster's `workers.defaults.trainer.gpus: 0` holds for runs that say nothing."""
    if default is None:
        return res
    fill = {name: getattr(default, name) for name in DEFAULTABLE
            if getattr(res, name) in (None, {}, []) and getattr(default, name) not in (None, {}, [])}  # fmt: skip
    if "gpus" not in res.model_fields_set and default.gpus is not None and "gpus" in default.model_fields_set:
        fill["gpus"] = default.gpus
    return res.model_copy(update=fill) if fill else res


def resources_for(spec: WarpRunSpec, task: Task, defaults: Mapping[str, PodResources] | None = None) -> PodResources:
    name = role(task)
    return with_defaults(getattr(spec.resources, name), (defaults or {}).get(name))


def job_labels(run: str, task: Task, attempt: int) -> dict[str, str]:
    labels = {
        LABEL_NAME: APP_NAME,
        LABEL_COMPONENT: COMPONENTS[task.kind],
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: run,
        LABEL_TASK: task.id,
        LABEL_ATTEMPT: str(attempt),
    }
    if task.iteration >= 0:
        labels[LABEL_ITERATION] = str(task.iteration)
    if task.member >= 0:
        labels[LABEL_MEMBER] = str(task.member)
    return labels


def owner_reference(run: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": run,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def command(task: Task, gpus: int, nodes: int = 1, argv: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(command, args) of the task container; `argv` replaces the task's own (a gang's members)."""
    argv = task.argv() if argv is None else argv
    if task.kind == "train" and nodes > 1:
        # torchrun reads the node count, processes per node, node rank and rendezvous address from the
        # PET_* variables of the pod (multinode_env), as under Kubeflow's trainer. `kwarp torchrun` is torchrun
        # that exits 75 when the member was fenced out (torchrun's own exit is 1: a failed try; trainer/launch.py).
        return ["kwarp"], ["torchrun", "--module", "kwarp", *argv]
    if task.kind == "train" and gpus > 1:
        # One process per GPU, started by torchrun (it ships with torch; `-m kwarp` runs kwarp/__main__.py,
        # the same CLI as the entrypoint). Not `accelerate launch`: its --cpu path (simple_launcher) starts
        # ONE process whatever --num_processes says, so a multi-process member could not run on a CPU.
        return ["kwarp"], [
            "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", str(gpus), "--module", "kwarp", *argv,
        ]  # fmt: skip
    return ["kwarp"], argv


def _quantities(r: PodResources) -> dict[str, Any]:
    q: dict[str, str] = {}
    if r.cpu:
        q["cpu"] = r.cpu
    if r.memory:
        q["memory"] = r.memory
    if r.ephemeral_storage:
        # A limit, not only a request: beyond it the kubelet evicts the pod without a DisruptionTarget
        # condition, so the Job fails with the kubelet's message instead of being replaced forever.
        q["ephemeral-storage"] = r.ephemeral_storage
    if r.gpus:
        q["nvidia.com/gpu"] = str(r.gpus)
    # requests == limits: a training pod should neither be throttled nor be the first one evicted.
    return {"requests": q, "limits": dict(q)} if q else {}


def _env(run: WarpRun, worker: WorkerSettings) -> list[dict[str, Any]]:
    storage = run.spec.storage
    env: list[dict[str, Any]] = [
        {"name": SPEC_ENV, "value": json.dumps(run.to_document(), sort_keys=True, separators=(",", ":"))},
        {"name": "KWARP_NAMESPACE", "value": run.metadata.namespace or "default"},
        {"name": "KWARP_METRICS_PORT", "value": str(worker.metrics_port)},
        {"name": "HOME", "value": SCRATCH},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "KWARP_CACHE", "value": f"{SCRATCH}/cache"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    forwarded = dict(worker.env)
    if storage.endpoint:
        forwarded["KWARP_S3_ENDPOINT"] = storage.endpoint
    env += [{"name": k, "value": v} for k, v in sorted(forwarded.items()) if k not in {e["name"] for e in env}]
    secret = storage.secret_name or worker.storage_secret
    if secret:
        # Explicit keys rather than envFrom: the pod gets the two credentials, not whatever else the Secret holds.
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key in SECRET_KEYS
        ]
    return env


def multinode_env(job: str, nodes: int, gpus: int) -> list[dict[str, Any]]:
    """torchrun's settings for pod <index> of an Indexed Job: static rendezvous at pod 0, whose stable
    host name <job>-0.<service> the headless Service (named like the Job) gives it."""
    return [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(gpus, 1))},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "PET_MASTER_ADDR", "value": f"{job}-0.{job}"},
        {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]


def needs_service(job: dict[str, Any]) -> bool:
    """A Job whose pods talk to each other (a multi-node member's, or a gang of multi-node members') comes with
    its headless Service, which its pods name as their subdomain; a gang of one-node members has none (its
    pods, one per member, never talk to each other)."""
    return bool(job["spec"]["template"]["spec"].get("subdomain"))


def service_manifest(job: dict[str, Any], job_uid: str) -> dict[str, Any]:
    """The headless Service of a multi-node Job: DNS names for its pods (<job>-<index>.<job>), no proxy.

    Owned by the Job, so it goes wherever the Job goes (retry, cleanup, the run's deletion)."""
    meta = job["metadata"]
    labels = dict(meta["labels"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": labels,
            # No blockOwnerDeletion: a Job's foreground deletion need not wait for its Service, and setting
            # it would need update on jobs/finalizers (the API server's OwnerReferencesPermissionEnforcement).
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": job_uid,
                                 "controller": True}],
        },  # fmt: skip
        "spec": {
            "clusterIP": "None",
            # Pods resolve each other before they are Ready: the rendezvous happens before any readiness.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_RUN: labels[LABEL_RUN], LABEL_TASK: labels[LABEL_TASK], LABEL_ATTEMPT: labels[LABEL_ATTEMPT]},
            "ports": [{"name": RENDEZVOUS_PORT_NAME, "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },  # fmt: skip
    }


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def job_manifest(run: WarpRun, uid: str, task: Task, attempt: int, worker: WorkerSettings) -> dict[str, Any]:
    """The Job of one task attempt. `run` is the spec to execute (the accepted one), `uid` the WarpRun's."""
    return _manifest(run, uid, task, attempt, worker, name=task.job_name(run.name, attempt),
                     labels=job_labels(run.name, task, attempt))  # fmt: skip


def _manifest(run: WarpRun, uid: str, task: Task, attempt: int, worker: WorkerSettings, *, name: str,
              labels: dict[str, str], argv: list[str] | None = None, extra_env: list[dict[str, Any]] | None = None,
              launcher: tuple[list[str], list[str]] | None = None,
              nodes_env: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """`launcher` replaces the container's (command, args) and `nodes_env` a multi-node member's torchrun
    settings (a gang of multi-node members: kwarp gang-node computes them in the pod)."""
    namespace = run.metadata.namespace or "default"
    res = resources_for(run.spec, task, worker.defaults)
    nodes = res.nodes if task.kind == "train" else 1
    cmd, args = launcher or command(task, res.gpus, nodes, argv)
    if nodes > 1 and nodes_env is None:
        nodes_env = multinode_env(name, nodes, res.gpus)
    component = COMPONENTS[task.kind]

    mounts = [{"name": "scratch", "mountPath": SCRATCH}]
    # A sizeLimit makes a full scratch an eviction of this pod (a failed attempt, with the kubelet's
    # message) rather than node disk pressure, whose evictions carry DisruptionTarget and are retried forever.
    scratch = {"sizeLimit": res.scratch_size_limit} if res.scratch_size_limit else {}
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": scratch}]
    if res.gpus > 0:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})

    container: dict[str, Any] = {
        "name": component,
        "image": res.image or worker.image,
        "command": cmd,
        "args": args,
        "env": _env(run, worker) + (extra_env or []) + (nodes_env or []),
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": worker.metrics_port, "protocol": "TCP"}]
        + ([{"name": RENDEZVOUS_PORT_NAME, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}] if nodes > 1 else []),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        # The last log lines land in the pod status when a task fails: the operator quotes them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if worker.image_pull_policy:
        container["imagePullPolicy"] = worker.image_pull_policy
    quantities = _quantities(res)
    if quantities:
        container["resources"] = quantities

    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        # Tasks talk to the store, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    service_account = res.service_account_name or worker.service_account
    if service_account:
        pod["serviceAccountName"] = service_account
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations]
    grace = res.termination_grace_period_seconds
    if grace is None:
        grace = ROLE_GRACE_SECONDS.get(role(task))
    if grace is not None:
        pod["terminationGracePeriodSeconds"] = grace

    job_spec: dict[str, Any] = {
        # Retries are the plan's: a failed attempt is a failed Job, and the next attempt is a new Job
        # (<name>-r<n>) that the operator counts against failurePolicy.maxRetries. Retrying pods inside
        # one Job would hide failures from the plan and reuse a name the operator already decided on.
        "backoffLimit": 0,
        # ... except that an evicted or preempted pod is not the task's fault: the Job replaces the pod
        # and the trainer resumes from its saved state. `status` is required by the API server before 1.34
        # (podFailurePolicy itself is beta and on by default from 1.26, GA in 1.31). Nor is a pod fenced out
        # (kwarp.store.fencing: a newer attempt of its task holds the lease, exit 75): not counted either,
        # so the Job neither fails nor charges failurePolicy.maxRetries; it keeps its newer pod if it has
        # one, else makes one, which finds the task's outputs (or its saved state) in the store.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # onPodConditions: [] because the Job schema requires the field before 1.29 (an empty list is
            # "not given": a rule has one of onExitCodes and onPodConditions).
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [FENCED_EXIT_CODE]}, "onPodConditions": []},
        ]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if worker.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = worker.ttl_seconds_after_finished
    meta_labels = dict(labels)
    queue = queue_of(run.spec, worker)
    if queue:
        # Only Kueue unsuspends it, once its Workload is admitted; the operator never does (reconcile.py).
        meta_labels[LABEL_KUEUE_QUEUE] = queue
        job_spec["suspend"] = True
    if res.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = res.active_deadline_seconds
    if nodes > 1:
        # One member on `nodes` pods: pod i gets index i (its node rank) and the host name <job>-<i> in
        # the Service's subdomain. The Job succeeds when every index has; backoffLimit 0 fails it at the
        # first failed pod, and the plan's retry starts a new attempt of the whole member.
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        pod["subdomain"] = name

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "ownerReferences": [owner_reference(run.name, uid)],
        },
        "spec": job_spec,
    }


# ------------------------------------------------------------------ the gang of an iteration's members
#
# Kueue admits a Workload all or nothing, and makes one Workload per batch/v1 Job ("Run a Kubernetes Job":
# the Workload's pod set counts the Job's parallelism). With one Job per member, the members of an iteration
# would be admitted one by one and could hold half their GPUs waiting for the rest. A queued run therefore
# trains an iteration's members as ONE Indexed Job: completions = parallelism = M x N (N nodes per member),
# pod index i is node rank i % N of member i // N (kwarp.core.placement), so one Workload asks for all M
# members' resources at once.

GANG = "members"


def gang_id(iteration: int) -> str:
    """The task label of an iteration's gang Job: i<k>-members (no plan task has this id)."""
    return f"i{iteration}-{GANG}"


def gang_name(run: str, iteration: int, attempt: int = 0) -> str:
    """<run>-i<k>-members; a new Job for the gang (after one failed or was withdrawn) adds -r<attempt>."""
    base = f"{run}-{gang_id(iteration)}"
    return base if attempt == 0 else f"{base}-r{attempt}"


def is_gang(job: Mapping[str, Any]) -> bool:
    task = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_TASK, "")
    return task.endswith(f"-{GANG}")


def gangs_members(spec: WarpRunSpec, worker: WorkerSettings) -> bool:
    """Whether a run trains each iteration's members as one gang Job: when Kueue admits its Jobs."""
    return queue_of(spec, worker) is not None


def nodes_of(job: Mapping[str, Any]) -> int:
    """Nodes per member of a gang Job: torchrun's PET_NNODES in its pods' environment (1: one pod per member)."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}]
    value = next((e.get("value") for e in containers[0].get("env") or [] if e.get("name") == NODES_ENV), None)
    return int(value) if value is not None and str(value).isdigit() and int(value) > 0 else 1


def gang_attempts(spec: WarpRunSpec) -> int:
    """The highest gang attempt of an iteration that can exist while the run has not failed: with one-node
    members, a new gang Job follows a spent budget (each member at most maxRetries failures); with multi-node
    members, every failed try (backoffLimit 0): at most M x maxRetries before one member is past it."""
    retries = spec.failure_policy.max_retries
    return retries * spec.warp.policies if spec.resources.trainer.nodes > 1 else retries


def gang_manifest(run: WarpRun, uid: str, iteration: int, attempt: int, worker: WorkerSettings) -> dict[str, Any]:
    """The Indexed Job that trains all M members of `iteration` (N pods each), queued in Kueue.

    One-node members (pod index = member): retries stay inside the Job. A failed pod is replaced for its
    index only, so finished members are not trained again, and the replacement resumes from the member's
    saved state. backoffLimit = M x failurePolicy.maxRetries is the gang's budget: the same number of
    retries the M member Jobs of an unqueued run may spend. It is shared: Kubernetes < 1.29 has no per-index
    limit (backoffLimitPerIndex is beta from 1.29) and the chart supports 1.26, so the operator itself
    enforces maxRetries per member by counting each index's failed pods (gang.gang_views), and fails the run
    when one member is past it.

    Multi-node members (N > 1): pod i runs `kwarp gang-node train --iteration k`, which makes it node i % N of
    member i // N with its rendezvous at the member's rank-0 pod <job>-<m x N>.<job> (the headless Service
    named like the Job, service_manifest). backoffLimit 0: a member restarts whole, all its ranks together,
    and the only way a batch Job restarts a group of its pods is to fail: the Job controller replaces a
    failed pod of its index only, leaving the member's other ranks in a broken rendezvous. So the first
    failed pod fails the gang Job (its other pods are stopped: trainers save their state on SIGTERM), counts
    as one failed try of its member, and the operator creates the next gang attempt.

    A later gang attempt has all M members again: a member whose final checkpoint exists returns at once
    (`kwarp train` skips published members), the others resume from their saved state.
    """
    members = run.spec.warp.policies
    member0 = Task.train(iteration, 0)
    labels = job_labels(run.name, member0, attempt)
    del labels[LABEL_MEMBER]  # the pod's completion index says the member
    labels[LABEL_TASK] = gang_id(iteration)
    name = gang_name(run.name, iteration, attempt)
    argv = ["train", "--iteration", str(iteration)]
    res = resources_for(run.spec, member0, worker.defaults)
    index = {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}
    if res.nodes == 1:
        # `kwarp train` without --member reads its member from MEMBER_ENV (trainer/cli.py).
        job = _manifest(run, uid, member0, attempt, worker, name=name, labels=labels, argv=argv,
                        extra_env=[{"name": MEMBER_ENV, **index}])  # fmt: skip
        job["spec"].update(completionMode="Indexed", completions=members, parallelism=members,
                           backoffLimit=members * run.spec.failure_policy.max_retries)  # fmt: skip
        return job
    nodes = res.nodes
    # What is the same for every pod; `kwarp gang-node` adds KWARP_MEMBER, PET_NODE_RANK and PET_MASTER_ADDR.
    gang_env = [
        {"name": INDEX_ENV, **index},
        {"name": HOSTS_ENV, "value": hosts_pattern(name, name)},
        {"name": NODES_ENV, "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(res.gpus, 1))},
        {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]
    job = _manifest(run, uid, member0, attempt, worker, name=name, labels=labels, launcher=(["kwarp"], ["gang-node", *argv]),
                    nodes_env=gang_env)  # fmt: skip
    job["spec"].update(completionMode="Indexed", completions=members * nodes, parallelism=members * nodes, backoffLimit=0)
    return job
