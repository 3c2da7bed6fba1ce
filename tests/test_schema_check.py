"""tests/schema_check.py answers what jsonschema answers: the test API server trusts its "valid" to skip
jsonschema's walk (tests/k8s_openapi.py), so a wrong "valid" would admit what a cluster refuses. Checked on
every object kwarp sends, on the Job controller's pods and statuses, and on thousands of broken variants of
them (one change each: a field removed, retyped, nulled, misspelt, an unknown field added), in both
directions; and the errors the server answers for the broken ones are jsonschema's, message for message."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests import k8s_openapi, kube_jobs, schema_check
from tests.kube_admission import BUILTIN_VERSION
from tests.kube_json import json_paths as paths
from tests.test_api_validity import operator_jobs, shipped_crds

Obj = dict[str, Any]
VERSIONS = [BUILTIN_VERSION, k8s_openapi.known_versions()[-1]]  # what the emulator checks; the newest


def jsonschema_errors(obj: Obj, version: str) -> list[str]:
    """k8s_openapi.errors as it was before the compiled check: jsonschema's walk of every object."""
    check = k8s_openapi.validator(version, obj["apiVersion"], obj["kind"])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {k8s_openapi._best(e).message}"
            for e in sorted(check.iter_errors(dict(obj)), key=lambda e: list(map(str, e.absolute_path)))]


def compiled(obj: Obj, version: str, part: str | None = None) -> bool:
    check = k8s_openapi._valid_check(version, obj["apiVersion"], obj["kind"], part)
    assert check is not None, f"{obj['kind']}'s schema should compile"
    return check(obj if part is None else obj[part])


def controller_pod(job: Obj) -> Obj:
    """The Pod the test Job controller creates for a Job (tests/kube_jobs.py _create_pod), and its status."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": job["metadata"]["name"] + "-abcde", "namespace": "team-a",
                         "labels": {"job-name": job["metadata"]["name"]},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                              "uid": "u", "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"restartPolicy": "Never", "containers": [{"name": container["name"], "image": container["image"]}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": container["name"], "ready": False, "restartCount": 0, "image": "", "imageID": "",
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "", "finishedAt": "2026-01-01T00:00:00Z"}}}],
                "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                "message": "Eviction API: evicting", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}  # fmt: skip


def job_statuses(job: Obj) -> Iterator[Obj]:
    """The Job with each status the Job controller writes."""
    start, end = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
    for status in (kube_jobs.job_status_running(start), kube_jobs.job_status_succeeded(start, end),
                   kube_jobs.job_status_failed(start, end), kube_jobs.job_status_suspended(None, end),
                   {**kube_jobs.job_status_succeeded(start, end), "succeeded": 3, "completedIndexes": "0-2"}):
        yield {**job, "status": status}


def valid_objects() -> list[tuple[str, Obj]]:
    jobs = list(operator_jobs())
    out = jobs + [(f"crd:{c['metadata']['name']}", c) for c in shipped_crds()]
    out += [(label + "/pod", controller_pod(job)) for label, job in jobs[:20] if job["kind"] == "Job"]
    out += [(f"{label}/status{i}", obj) for label, job in jobs[:10] if job["kind"] == "Job"
            for i, obj in enumerate(job_statuses(job))]
    return out


VALID = valid_objects()


REPLACEMENTS = [None, 0, -1, 1.5, 2.0, True, "x", "", [], {}, ["x"], [{}], {"zzUnknown": 1}]


def mutated(obj: Obj, rng: random.Random) -> tuple[str, Obj]:
    """`obj` with one change at a random place (apiVersion and kind kept: they pick the schema)."""
    out = copy.deepcopy(obj)
    path = rng.choice([p for p in paths(out) if p and p[0] not in ("apiVersion", "kind")])
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    key, old = path[-1], parent[path[-1]]
    how = rng.choice(["replace", "replace", "remove", "unknown", "misspell"])
    if how == "remove" and isinstance(parent, dict):
        del parent[key]
    elif how == "unknown" and isinstance(old, dict):
        old["zzUnknown"] = "v"
    elif how == "misspell" and isinstance(old, str):
        parent[key] = old + "x"
    else:
        how = "replace"
        parent[key] = rng.choice(REPLACEMENTS)
    return f"{how} {'.'.join(map(str, path))}", out


def test_every_valid_object_is_valid_to_both() -> None:
    assert len(VALID) > 200
    for version in VERSIONS:
        for label, obj in VALID:
            assert jsonschema_errors(obj, version) == [], label
            assert compiled(obj, version), f"{label} ({version}): the compiled check refuses a valid object"


@pytest.mark.parametrize("version", VERSIONS)
def test_broken_variants_are_judged_as_jsonschema_judges_them(version: str) -> None:
    """Both directions: a broken object the compiled check calls valid would be admitted; a valid one it
    calls invalid only costs jsonschema's walk, but the check is meant to be exact, so that fails too."""
    rng = random.Random(f"schema-check-{version}")
    judged = {True: 0, False: 0}
    for label, obj in rng.sample(VALID, 120):
        for _ in range(12):
            how, variant = mutated(obj, rng)
            want = jsonschema_errors(variant, version)
            assert compiled(variant, version) == (not want), f"{label}, {how}: jsonschema says {want[:3]}"
            assert k8s_openapi.errors(variant, version) == want, f"{label}, {how}"
            judged[not want] += 1
    assert judged[False] > 500 and judged[True] > 50, judged  # mostly refused; some changes stay valid


def jsonschema_status_errors(obj: Obj, version: str) -> list[str]:
    """k8s_openapi.status_errors as it was before the compiled check."""
    check = k8s_openapi.validator(version, obj["apiVersion"], obj["kind"])
    status = check.evolve(schema=check.schema["properties"]["status"])
    return [".".join(["status", *(str(p) for p in e.absolute_path)]) + f": {k8s_openapi._best(e).message}"
            for e in sorted(status.iter_errors(obj["status"]), key=lambda e: list(map(str, e.absolute_path)))]


def test_status_alone_is_judged_as_jsonschema_judges_it() -> None:
    """The Job controller's status writes are checked by their status alone (tests/kube_admission.py)."""
    rng = random.Random("schema-check-status")
    jobs = [obj for label, obj in VALID if "/status" in label]
    judged = {True: 0, False: 0}
    for job in jobs:
        for variant in [job] + [mutated({**job, "spec": {}, "metadata": {}}, rng)[1] for _ in range(30)]:
            if not isinstance(variant.get("status"), dict):
                continue
            want = jsonschema_status_errors(variant, BUILTIN_VERSION)
            assert compiled(variant, BUILTIN_VERSION, "status") == (not want), variant["status"]
            assert k8s_openapi.status_errors(variant, BUILTIN_VERSION) == want
            judged[not want] += 1
    assert judged[False] > 100 and judged[True] > 50, judged


def test_types_are_jsonschemas_types() -> None:
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER
    for value in [None, True, False, 0, 1, -7, 2**70, 1.0, 1.5, float("nan"), float("inf"), "", "1", [], {}, [1], {"a": 1}]:
        for name in ("string", "object", "array", "null", "boolean", "integer", "number"):
            assert schema_check.is_type(value, name) == checker.is_type(value, name), (value, name)


def test_a_keyword_it_does_not_implement_hands_the_object_to_jsonschema() -> None:
    resolver = jsonschema.Draft202012Validator({})._resolver
    with pytest.raises(schema_check.Unsupported):
        schema_check.compile_check({"type": "string", "pattern": "^a"}, resolver)
    behind_ref = schema_check.compile_check({"$ref": "#/$defs/a", "$defs": {"a": {"minLength": 2}}},
                                            jsonschema.Draft202012Validator({"$defs": {"a": {"minLength": 2}}})._resolver)
    with pytest.raises(schema_check.Unsupported):
        behind_ref("x")  # found when the $ref is first followed


def test_a_schema_it_cannot_compile_is_left_to_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(schema: Any, resolver: Any) -> schema_check.Check:
        raise schema_check.Unsupported("as if the schema had a keyword it does not implement")

    monkeypatch.setattr(schema_check, "compile_check", refuse)
    k8s_openapi._valid_check.cache_clear()
    try:
        job = next(obj for label, obj in VALID if obj["kind"] == "Job")
        broken = {**job, "spec": {**job["spec"], "backoffLimit": "0"}}
        assert k8s_openapi._valid_check(BUILTIN_VERSION, "batch/v1", "Job", None) is None
        assert k8s_openapi.errors(job, BUILTIN_VERSION) == []
        assert k8s_openapi.errors(broken, BUILTIN_VERSION) == jsonschema_errors(broken, BUILTIN_VERSION) != []
    finally:
        k8s_openapi._valid_check.cache_clear()
