"""kopf's diff base in the operator (operator/diffbase.py): a WarpRun's essence is the one kopf's own storage
builds and reads, whatever its status and metadata hold; other kinds (Jobs: event handlers only) get none."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest
from kopf._cogs.structs.diffs import diff  # the diff kopf's processing takes of two essences

from kwarp.core.spec import API_GROUP, API_VERSION, KIND
from kwarp.operator.diffbase import RunEssence

KEY = "last-handled-configuration"


def kopfs() -> kopf.AnnotationsDiffBaseStorage:
    return kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=KEY)


def ours() -> RunEssence:
    return RunEssence(prefix=API_GROUP, key=KEY, tracked={(API_GROUP, KIND)})


def warprun(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {
            "name": "r", "namespace": "ns", "uid": "u-1", "resourceVersion": "42", "generation": 3,
            "creationTimestamp": "2026-12-03T19:00:00Z", "finalizers": [f"{API_GROUP}/finalizer"],
            "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}],
            **meta,
        },
        "spec": {"model": {"name": "tiny"}, "warp": {"iterations": 2, "policies": 2}, "suspend": False},
        "status": {"phase": "Training", "iteration": 1, "members": [{"index": 0, "steps": 10}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


ESSENCE = json.dumps({"spec": {"suspend": True}, "metadata": {"labels": {"team": "a"}}})
RUNS = [
    warprun(),
    warprun(labels={"team": "a"}),
    warprun(labels={"team": "a"}, annotations={
        f"{API_GROUP}/{KEY}": ESSENCE,  # kopf's own: left out of the essence, read by fetch
        f"{API_GROUP}/run_changed": '{"started": "x"}',  # a handler's progress
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
        "other.example.com/kopf-managed": "yes",  # another kopf operator's marker: its prefix is left out
        "other.example.com/x": "1",
        "note": "kept",
    }),  # fmt: skip
    warprun(ownerReferences=[{"kind": "Deployment", "name": "d", "uid": "x", "apiVersion": "apps/v1"}]),
    {k: v for k, v in warprun().items() if k != "status"},
]


@pytest.mark.parametrize("raw", RUNS)
def test_a_runs_essence_is_kopfs(raw: dict[str, Any]) -> None:
    before = copy.deepcopy(raw)
    body = kopf.Body(raw)
    assert ours().build(body=body) == kopfs().build(body=body)
    assert ours().fetch(body=body) == kopfs().fetch(body=body)
    assert raw == before  # the watched object is not changed


def test_a_runs_essence_with_extra_fields_is_kopfs() -> None:
    body = kopf.Body(warprun())
    extra = [("status", "phase")]
    got = ours().build(body=body, extra_fields=extra)
    assert got == kopfs().build(body=body, extra_fields=extra)
    assert got["status"] == {"phase": "Training"}


def test_a_change_of_spec_or_labels_is_a_diff_and_a_status_change_is_none() -> None:
    storage = ours()
    base = storage.build(body=kopf.Body(warprun()))
    status_only = warprun()
    status_only["status"]["phase"] = "Merging"
    status_only["metadata"]["resourceVersion"] = "43"
    assert not diff(base, storage.build(body=kopf.Body(status_only)))
    spec = warprun()
    spec["spec"]["suspend"] = True
    assert diff(base, storage.build(body=kopf.Body(spec))) == (kopf.DiffItem(kopf.DiffOperation.CHANGE, ("spec", "suspend"), False, True),)
    assert diff(base, storage.build(body=kopf.Body(warprun(labels={"team": "b"})))) == (
        kopf.DiffItem(kopf.DiffOperation.ADD, ("metadata",), None, {"labels": {"team": "b"}}),
    )


def test_other_kinds_get_no_essence() -> None:
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "j", "namespace": "ns", "labels": {f"{API_GROUP}/run": "r"},
                     "annotations": {f"{API_GROUP}/{KEY}": ESSENCE}},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }  # fmt: skip
    storage = ours()
    assert storage.build(body=kopf.Body(job)) is None and storage.fetch(body=kopf.Body(job)) is None
    # the same kind name in another group is not a WarpRun
    other = {**warprun(), "apiVersion": "example.com/v1"}
    assert storage.build(body=kopf.Body(other)) is None
