"""Every object kwarp sends to Kubernetes is one a real API server accepts.

- Built-in kinds (every chart object under every values scenario, every Job the operator builds for a
  matrix of specs, suspended or not, and the CRDs as objects) against Kubernetes' own OpenAPI schemas in
  strict mode (kubernetes-validate), for every minor version from the chart's kubeVersion floor to the
  newest the package knows.
- The CRDs against the apiextensions static and structural rules (tests/apiextensions.py).
- Custom resources (the example WarpRuns, the chart's kopf peering objects) through what the API server
  does to them: prune, default, validate against the CRD's schema (tests/customresource.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kwarp.core.crd import crd
from kwarp.core.plan import Task
from kwarp.core.resources import PodResources
from kwarp.core.spec import parse
from kwarp.operator.jobs import (
    WorkerSettings,
    gang_manifest,
    gangs_members,
    job_manifest,
    needs_service,
    service_manifest,
)
from kwarp.operator.watchdog import fail_patch

from . import customresource, k8s_openapi
from .apiextensions import validate_crd
from .test_spec import doc

ROOT = Path(__file__).resolve().parents[1]
CRD_FILES = sorted((ROOT / "charts" / "kwarp" / "crds").glob("*.yaml")) + [ROOT / "operator" / "peering_crds.yaml"]
UID = "0b6f8d2e-5c43-4e57-a3a4-3f0a3c1d2e11"
# Kinds whose CRD kwarp does not ship (prometheus-operator's): kubernetes-validate has no schema for them.
FOREIGN_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def shipped_crds() -> list[dict[str, Any]]:
    return [d for path in CRD_FILES for d in yaml_docs(path)]


# ------------------------------------------------------------------------------ what the operator builds

RESOURCE_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "multi-node": {"trainer": {"gpus": 8, "nodes": 4, "cpu": "96", "memory": "1Ti"}},
    "cpu-only": {"trainer": {"gpus": 0, "cpu": "2", "memory": "4Gi"}, "evaluation": {"gpus": 0}},
    "multi-gpu": {"trainer": {"gpus": 4, "cpu": "32", "memory": "256Gi",
                              "nodeSelector": {"nvidia.com/gpu.product": "H100-80GB"},
                              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                              {"key": "spot", "operator": "Equal", "value": "true",
                                               "effect": "NoExecute", "tolerationSeconds": 30}],
                              "priorityClassName": "training", "serviceAccountName": "kwarp-worker"},
                  "merger": {"cpu": "500m", "memory": "8Gi", "image": "registry.example/kwarp-cpu:1.0"}},
    # Work that must end or fail visibly: grace period, scratch and ephemeral-storage limits, a deadline.
    "bounded": {"trainer": {"terminationGracePeriodSeconds": 600, "ephemeralStorage": "200Gi",
                            "scratchSizeLimit": "100Gi", "activeDeadlineSeconds": 86400},
                "merger": {"terminationGracePeriodSeconds": 0, "scratchSizeLimit": "500Mi",
                           "activeDeadlineSeconds": 3600}},
}
WORKERS = {
    "plain": WorkerSettings(image="registry.example/kwarp-worker:1.0"),
    "configured": WorkerSettings(
        image="registry.example/kwarp-worker@sha256:" + "b" * 64, service_account="kwarp-worker",
        ttl_seconds_after_finished=3600, metrics_port=9500, storage_secret="kwarp-s3",
        image_pull_policy="IfNotPresent", env={"KWARP_S3_SECURE": "0"},
        defaults={"trainer": PodResources(node_selector={"pool": "gpu"}, priority_class_name="batch")},
    ),
    # Kueue: queue label, created suspended (then, below, as Kueue's admission leaves it).
    "kueue": WorkerSettings(image="registry.example/kwarp-worker:1.0", queue_name="team-a-gpu"),
}
JOB_UID = "6c1f3a52-9d0e-4b7a-8e21-0d4c5b6a7f80"
TASKS = [Task.prepare(), Task.train(0, 0), Task.train(2, 7), Task.merge(1), Task.eval(1), Task.export()]


def operator_jobs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, Job) for every task of a matrix of specs, worker settings, attempts, and suspended or not."""
    for (case, resources), (wname, worker), task, attempt in itertools.product(
        RESOURCE_CASES.items(), WORKERS.items(), TASKS, (0, 3)
    ):
        run = parse({**doc(**{"spec.resources": resources, "spec.failurePolicy": {"maxRetries": 5}}),
                     "metadata": {"name": "gemma-warp", "namespace": "team-a"}})
        job = job_manifest(run, UID, task, attempt, worker)
        label = f"{case}/{wname}/{task.id}/r{attempt}"
        yield label, job
        # What the operator's suspend patch leaves (spec.suspend), as the API server stores it.
        suspended = {**job, "spec": {**job["spec"], "suspend": True}}
        yield label + "/suspended", suspended
        if worker.queue_name:  # Kueue's admission: unsuspended, the flavor's node labels in the pod template
            template = job["spec"]["template"]
            pod = {**template["spec"], "nodeSelector": {**template["spec"].get("nodeSelector", {}),
                                                        "cloud.example/gpu": "h100"}}  # fmt: skip
            admitted = {**job, "spec": {**job["spec"], "suspend": False, "template": {**template, "spec": pod}}}
            yield label + "/admitted", admitted
        # What the progress watchdog's patch leaves on a stalled Job (a reason annotation, a passed deadline).
        if task.kind == "train":
            patch = fail_patch("NoProgress: no training progress for 1900 s")
            stalled = {**job, "metadata": {**job["metadata"], **patch["metadata"]}, "spec": {**job["spec"], **patch["spec"]}}
            yield label + "/stalled", stalled
        if needs_service(job):  # a multi-node member's headless Service, owned by its Job
            yield label + "/service", service_manifest(job, JOB_UID)
    # A queued run's iterations: one Indexed gang Job of all members (M x N pods, with its headless Service when
    # members span nodes), queued and as Kueue admits it, and as it runs: completedIndexes and failed pods.
    for (case, resources), (wname, worker), (iteration, attempt) in itertools.product(
        RESOURCE_CASES.items(), WORKERS.items(), ((0, 0), (2, 3))
    ):
        run = parse({**doc(**{"spec.resources": resources, "spec.failurePolicy": {"maxRetries": 5},
                              "spec.warp.policies": 4, "spec.queueName": "team-a-gpu"}),
                     "metadata": {"name": "gemma-warp", "namespace": "team-a"}})  # fmt: skip
        if not gangs_members(run.spec, worker):
            continue
        job = gang_manifest(run, UID, iteration, attempt, worker)
        label = f"gang/{case}/{wname}/i{iteration}/r{attempt}"
        yield label, job
        template = job["spec"]["template"]
        pod = {**template["spec"], "nodeSelector": {**template["spec"].get("nodeSelector", {}), "cloud.example/gpu": "h100"}}
        running = {**job, "spec": {**job["spec"], "suspend": False, "template": {**template, "spec": pod}},
                   "status": {"active": 3, "succeeded": 1, "failed": 2, "completedIndexes": "1",
                              "startTime": "2026-01-01T00:00:00Z"}}  # fmt: skip
        yield label + "/admitted", running
        if needs_service(job):  # multi-node members: <job>-<index>.<job> names their pods
            yield label + "/service", service_manifest(job, JOB_UID)


def chart_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's library) is not installed")
    from .helm_chart import ALL_SCENARIOS, CHART, render

    with helm.Chart.load(CHART) as chart:
        for scenario, values in sorted(ALL_SCENARIOS.items()):
            for obj in render(chart, values):
                yield f"chart:{scenario}:{obj['kind']}/{obj['metadata']['name']}", obj


# ------------------------------------------------------------------------------ built-in kinds, per version


@pytest.fixture(scope="module")
def built_in_objects() -> list[tuple[str, dict[str, Any]]]:
    objects = list(chart_objects()) + list(operator_jobs())
    objects += [(f"crd:{c['metadata']['name']}", c) for c in shipped_crds()]
    return objects


@pytest.mark.parametrize("version", k8s_openapi.chart_versions())
def test_every_built_in_object_is_valid_for_every_supported_version(
    version: str, built_in_objects: list[tuple[str, dict[str, Any]]]
) -> None:
    problems, checked, skipped = [], 0, set()
    for label, obj in built_in_objects:
        if obj["kind"] in FOREIGN_KINDS or obj["apiVersion"].startswith("kopf.dev/"):
            skipped.add(obj["kind"])
            continue
        problems += [f"{label}: {e}" for e in k8s_openapi.errors(obj, version)]
        checked += 1
    print(f"Kubernetes {version}: {checked} built-in objects checked (strict); not built-in: {sorted(skipped)}")
    assert checked > 200
    assert not problems, f"Kubernetes {version} refuses:\n" + "\n".join(problems[:40])


def test_the_chart_floor_is_what_kubernetes_validate_can_check() -> None:
    versions = k8s_openapi.chart_versions()
    assert versions[0] == k8s_openapi.chart_floor(), "kubernetes-validate has no schemas for the chart's floor"
    assert versions[-1] == k8s_openapi.known_versions()[-1]


def test_jobs_set_the_pod_condition_status_older_servers_require() -> None:
    """Before 1.34 the Job schema requires onPodConditions[].status: the operator's Jobs set it."""
    job = next(job for _, job in operator_jobs())
    assert k8s_openapi.errors(job, "1.26") == []
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                     {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [75]}, "onPodConditions": []}]


def test_the_gang_job_shares_one_retry_budget_because_the_floor_has_no_per_index_limit() -> None:
    """Why a gang Job's retries are backoffLimit = M x maxRetries (one budget, per-member limits enforced by
    the operator) and not backoffLimitPerIndex: Kubernetes before 1.28 refuses the field."""
    label, gang = next((label, job) for label, job in operator_jobs() if label.startswith("gang/"))
    assert gang["spec"]["backoffLimit"] == 4 * 5 and gang["spec"]["completionMode"] == "Indexed", label
    per_index = {**gang, "spec": {**gang["spec"], "backoffLimitPerIndex": 5}}
    assert any("backoffLimitPerIndex" in e for e in k8s_openapi.errors(per_index, "1.27"))
    assert k8s_openapi.errors(per_index, "1.29") == []


def test_the_gang_of_multi_node_members_and_its_service_are_in_the_matrix() -> None:
    """A queued run with nodes > 1: its gang Job (M x N pods, a subdomain) and headless Service are checked above."""
    objects = dict(operator_jobs())
    gangs = [label for label in objects if label.startswith("gang/multi-node/")]
    assert any(label.endswith("/service") for label in gangs), gangs
    job = next(objects[label] for label in gangs if label.count("/") == 4)
    assert job["spec"]["completions"] == 4 * 4 and job["spec"]["template"]["spec"]["subdomain"] == job["metadata"]["name"]


def test_strict_schemas_catch_what_the_api_server_refuses() -> None:
    """The checker itself: a Job without the status, with an unknown field, or with a wrong type fails."""
    job = next(job for _, job in operator_jobs())
    no_status = {**job, "spec": {**job["spec"], "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}}
    assert any("status" in e for e in k8s_openapi.errors(no_status, "1.26"))
    assert k8s_openapi.errors(no_status, k8s_openapi.known_versions()[-1]) == []  # optional from 1.34
    unknown = {**job, "spec": {**job["spec"], "backoffLimitt": 0}}
    assert any("backoffLimitt" in e for e in k8s_openapi.errors(unknown, "1.30"))
    wrong = {**job, "spec": {**job["spec"], "backoffLimit": "0"}}
    assert any("backoffLimit" in e for e in k8s_openapi.errors(wrong, "1.30"))


# ------------------------------------------------------------------------------ CRDs


@pytest.mark.parametrize("crd_doc", shipped_crds(), ids=lambda c: c["metadata"]["name"])
def test_shipped_crds_pass_the_apiextensions_rules(crd_doc: dict[str, Any]) -> None:
    assert validate_crd(crd_doc) == []


def test_the_warprun_crd_is_in_kubernetes_dialect() -> None:
    """The two problems that made every API server refuse the CRD: numeric exclusive bounds and
    additionalProperties beside properties."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    from .apiextensions import walk

    nodes = list(walk(schema))
    assert all(isinstance(n.get("exclusiveMinimum", False), bool) for n in nodes)
    assert not [n for n in nodes if "additionalProperties" in n and "properties" in n]
    temperature = schema["properties"]["spec"]["properties"]["training"]["properties"]["temperature"]
    assert (temperature["minimum"], temperature["exclusiveMinimum"]) == (0.0, True)
    assert validate_crd(crd()) == []


# ------------------------------------------------------------------------------ custom resources


def warprun_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def example_warpruns() -> list[tuple[str, dict[str, Any]]]:
    from kwarp.tasks import document

    found = [(p.name, d) for p in sorted((ROOT / "examples").glob("warprun*.yaml")) for d in yaml_docs(p)
             if d.get("kind") == "WarpRun"]
    demo = document.warprun(policy="sft", reward="rm", train="train.jsonl", eval="eval.jsonl", storage="runs")
    found.append(("demo-task", demo))
    return found


@pytest.mark.parametrize(("name", "document"), example_warpruns(), ids=lambda v: v if isinstance(v, str) else "")
def test_example_warpruns_are_admitted_and_mean_the_same(name: str, document: dict[str, Any]) -> None:
    """Strict field validation finds no unknown field; after the API server's pruning and defaulting the
    run parses to exactly what `kwarp validate` reads from the file."""
    stored, warnings = customresource.admit(document, warprun_schema(), field_validation="Strict")
    assert warnings == []
    assert parse(stored).spec == parse(document).spec


def test_kopf_peering_objects_are_admitted_by_their_crd() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's library) is not installed")
    from .helm_chart import CHART, render

    schemas = {c["spec"]["names"]["kind"]: (c["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
                                            c["spec"]["scope"] == "Namespaced") for c in shipped_crds()}
    with helm.Chart.load(CHART) as chart:
        peerings = [o for o in render(chart, {}) if o["apiVersion"].startswith("kopf.dev/")]
    assert peerings
    for obj in peerings:
        schema, namespaced = schemas[obj["kind"]]
        customresource.admit(obj, schema, namespaced=namespaced, field_validation="Strict")
