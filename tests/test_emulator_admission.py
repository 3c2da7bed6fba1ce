"""The test API server refuses what a real one refuses, on create and on update, and serves what kubectl reads
(tests/kube_admission.py): so an invalid Job, CRD or WarpRun fails the operator's tests the way a cluster would."""

from __future__ import annotations

import copy
import datetime
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kwarp.core.crd import crd
from kwarp.core.plan import Task
from kwarp.core.spec import parse
from kwarp.operator.jobs import WorkerSettings, job_manifest

from . import customresource
from .kube import Cluster
from .kube_admission import BUILTIN_VERSION, _invalid, builtin_errors, human_age
from .kube_server import merge_patch
from .operator_harness import warprun
from .test_spec import doc

NS = "default"
RUNS = f"/apis/kwarp.dev/v1alpha1/namespaces/{NS}/warpruns"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def call(cluster: Cluster, method: str, path: str, body: Any = None, *, accept: str = "application/json",
         content_type: str = "application/json") -> tuple[int, dict[str, str], Any]:
    """One HTTP request; (status, headers, decoded body), errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(cluster.url + path, data=data, method=method, headers={
        "Content-Type": content_type, "Accept": accept, "Authorization": "Bearer test-token"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, crds=[crd()]) as c:
        yield c


def a_job(name: str = "gemma-warp-i0-m0") -> dict[str, Any]:
    run = parse({**doc(), "metadata": {"name": "gemma-warp", "namespace": NS}})
    job = job_manifest(run, "0b6f8d2e-5c43-4e57-a3a4-3f0a3c1d2e11", Task.train(0, 0), 0, WorkerSettings(image="w:1"))
    job["metadata"]["name"] = name
    job["metadata"].pop("ownerReferences")
    return job


# ------------------------------------------------------------------------------ built-in kinds


def test_the_operators_jobs_are_admitted(cluster: Cluster) -> None:
    code, _, body = call(cluster, "POST", JOBS, a_job())
    assert code == 201, body


def test_a_job_without_the_pod_condition_status_is_refused_at_the_floor_version(cluster: Cluster) -> None:
    """What the operator used to send: a 1.26 API server answers 422, and so does this one."""
    assert BUILTIN_VERSION == "1.26"
    job = a_job()
    job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0].pop("status")
    code, _, body = call(cluster, "POST", JOBS, job)
    assert code == 422 and body["reason"] == "Invalid", body
    assert "status" in body["message"] and body["details"]["kind"] == "Job"


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda j: j["spec"].update(backoffLimitt=0), "backoffLimitt"),
    (lambda j: j["spec"]["template"]["spec"]["containers"][0].update(image=7), "image"),
    (lambda j: j["metadata"].update(name="g" * 64), "batch.kubernetes.io/job-name"),
    (lambda j: j["metadata"]["labels"].update({"kwarp.dev/run": "x" * 64}), "metadata.labels"),
    (lambda j: j["metadata"].update(name="Gemma"), "RFC 1123 subdomain"),
])
def test_invalid_jobs_are_refused(cluster: Cluster, change: Any, fragment: str) -> None:
    job = a_job()
    change(job)
    code, _, body = call(cluster, "POST", JOBS, job)
    assert code == 422, body
    assert fragment in body["message"], body["message"]


def test_updates_are_checked_too(cluster: Cluster) -> None:
    assert call(cluster, "POST", JOBS, a_job())[0] == 201
    code, _, body = call(cluster, "PATCH", f"{JOBS}/gemma-warp-i0-m0", {"spec": {"suspend": "yes"}},
                         content_type="application/merge-patch+json")
    assert code == 422 and "suspend" in body["message"], body
    code, _, body = call(cluster, "PATCH", f"{JOBS}/gemma-warp-i0-m0", {"spec": {"suspend": True}},
                         content_type="application/merge-patch+json")
    assert code == 200 and body["spec"]["suspend"] is True


# ------------------------------------------------------------------------------ CRDs


def test_a_crd_in_draft_2020_dialect_does_not_even_decode(cluster: Cluster) -> None:
    bad = crd()
    spec = bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["training"]["properties"]["temperature"]["exclusiveMinimum"] = 0.0
    code, _, body = call(cluster, "DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{bad['metadata']['name']}")
    assert code == 200, body
    code, _, body = call(cluster, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", bad)
    assert code in (400, 422) and "exclusiveMinimum" in body["message"], body


def test_a_crd_with_additional_properties_beside_properties_is_invalid(cluster: Cluster) -> None:
    bad = copy.deepcopy(crd())
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["additionalProperties"] = False
    call(cluster, "DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{bad['metadata']['name']}")
    code, _, body = call(cluster, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", bad)
    assert code == 422, body
    assert "additionalProperties and properties are mutual exclusive" in body["message"]


def test_a_created_crd_is_established_and_served(cluster: Cluster) -> None:
    code, _, body = call(cluster, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/warpruns.kwarp.dev")
    assert code == 200
    conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert body["status"]["storedVersions"] == ["v1alpha1"]
    code, _, resources = call(cluster, "GET", "/apis/kwarp.dev/v1alpha1")
    assert code == 200 and {r["name"] for r in resources["resources"]} >= {"warpruns", "warpruns/status"}


# ------------------------------------------------------------------------------ custom resources


def test_unknown_fields_are_refused_under_strict_and_pruned_with_a_warning_otherwise(cluster: Cluster) -> None:
    body = warprun(Path("/runs"), name="typo")
    body["spec"]["training"] = {"learning_rate": 1e-5}
    code, _, refused = call(cluster, "POST", RUNS + "?fieldValidation=Strict", body)
    assert code == 400 and refused["message"] == 'strict decoding error: unknown field "spec.training.learning_rate"'
    code, headers, stored = call(cluster, "POST", RUNS, body)  # no parameter: Warn
    assert code == 201
    assert headers.get("Warning") == '299 - "unknown field \\"spec.training.learning_rate\\""'
    assert stored["spec"]["training"]["learningRate"] == 1e-6 and "learning_rate" not in stored["spec"]["training"]


def test_custom_resources_are_validated_on_create_update_and_status(cluster: Cluster) -> None:
    bad = warprun(Path("/runs"), name="bad")
    bad["spec"]["warp"]["policies"] = 0
    code, _, body = call(cluster, "POST", RUNS, bad)
    assert code == 422 and "spec.warp.policies in body should be greater than or equal to 1" in body["message"]
    assert call(cluster, "POST", RUNS, warprun(Path("/runs"), name="ok"))[0] == 201
    merge = "application/merge-patch+json"
    code, _, body = call(cluster, "PATCH", f"{RUNS}/ok", {"spec": {"cleanup": "Purge"}}, content_type=merge)
    assert code == 422 and 'spec.cleanup: Unsupported value: "Purge"' in body["message"]
    code, _, body = call(cluster, "PATCH", f"{RUNS}/ok/status", {"status": {"iteration": "first"}}, content_type=merge)
    assert code == 422 and "status.iteration in body must be of type integer" in body["message"]
    code, _, body = call(cluster, "PATCH", f"{RUNS}/ok/status", {"status": {"iteration": 1}}, content_type=merge)
    assert code == 200 and body["status"]["iteration"] == 1


MINIMAL_JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {
    "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}  # fmt: skip


@pytest.mark.parametrize(("kind", "status"), [
    ("job", {"active": 1, "startTime": "2026-01-01T00:00:00Z"}),
    ("job", {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}),
    ("job", {"active": "one", "unknownField": 1}),
    ("job", {"conditions": [{"type": "Complete"}]}),
    ("job", {"failed": None}),
    ("run", {"phase": "Training", "iteration": 0, "membersDone": "0/2"}),
    ("run", {"phase": "Training", "unknownField": {"a": 1}, "iteration": 1}),
    ("run", {"iteration": "first", "reward": "high"}),
    ("run", {"phase": None, "conditions": [{"type": "Ready", "status": "True"}]}),
    ("run", {"phase": "Resting"}),
])  # fmt: skip
def test_a_status_write_is_admitted_as_the_whole_object_would_be(cluster: Cluster, kind: str, status: Any) -> None:
    """A /status write is admitted by checking the status alone (the rest is the stored, admitted object), and
    must answer what admitting the whole object gives: the same refusal and causes, the same stored status
    (pruned, defaulted) and warnings."""
    path, body = (JOBS, MINIMAL_JOB) if kind == "job" else (RUNS, warprun(Path("/runs"), name="r"))
    code, _, current = call(cluster, "POST", path, body)
    assert code == 201
    name = current["metadata"]["name"]
    whole = merge_patch(current, {"status": status})
    if kind == "job":
        errs = builtin_errors(whole, namespaced=True)
        expected = (422, _invalid("Job", "batch", name, errs).message) if errs else (200, whole["status"])
        warnings = None
    else:
        schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        try:
            stored, warned = customresource.admit(whole, schema)
            expected, warnings = (200, stored["status"]), warned
        except customresource.InvalidError as err:
            expected, warnings = (422, _invalid("WarpRun", "kwarp.dev", name, err.causes).message), None
    code, headers, answer = call(cluster, "PATCH", f"{path}/{name}/status", {"status": status},
                                 content_type="application/merge-patch+json")  # fmt: skip
    assert (code, answer["message"] if code == 422 else answer["status"]) == expected
    if warnings:
        assert headers.get("Warning") == ", ".join(f"299 - {json.dumps(w)}" for w in warnings)
    else:
        assert "Warning" not in headers


def test_get_serves_the_table_kubectl_prints(cluster: Cluster) -> None:
    assert call(cluster, "POST", RUNS, warprun(Path("/runs"), name="shown"))[0] == 201
    call(cluster, "PATCH", f"{RUNS}/shown/status", {"status": {"phase": "Training", "iteration": 1, "membersDone": "1/2"}},
         content_type="application/merge-patch+json")
    code, _, table = call(cluster, "GET", RUNS, accept=TABLE)
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Phase", "Iteration", "Members", "Reward", "KL", "Progress", "ETA", "Age"]
    (row,) = table["rows"]
    assert row["cells"][:8] == ["shown", "Training", 1, "1/2", None, None, None, None]
    assert row["cells"][8].endswith("s") and row["object"]["kind"] == "PartialObjectMetadata"
    code, _, one = call(cluster, "GET", f"{RUNS}/shown", accept=TABLE)
    assert code == 200 and one["rows"][0]["cells"][0] == "shown"
    code, _, plain = call(cluster, "GET", f"{RUNS}/shown")
    assert plain["kind"] == "WarpRun"


def test_openapi_v3_tells_kubectl_the_server_validates_fields(cluster: Cluster) -> None:
    code, _, index = call(cluster, "GET", "/openapi/v3")
    assert code == 200 and "apis/kwarp.dev/v1alpha1" in index["paths"] and "apis/batch/v1" in index["paths"]
    code, _, doc_ = call(cluster, "GET", index["paths"]["apis/kwarp.dev/v1alpha1"]["serverRelativeURL"])
    patch = doc_["paths"]["/apis/kwarp.dev/v1alpha1/namespaces/{namespace}/warpruns/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "kwarp.dev", "version": "v1alpha1", "kind": "WarpRun"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]


@pytest.mark.parametrize(("seconds", "shown"), [
    (5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 120, "3h2m"), (30 * 3600, "30h"),
    (3 * 86400 + 3600, "3d1h"), (20 * 86400, "20d"), (800 * 86400, "2y70d"),
])
def test_ages_read_as_kubectl_shows_them(seconds: int, shown: str) -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    then = (now - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert human_age(then, now) == shown
