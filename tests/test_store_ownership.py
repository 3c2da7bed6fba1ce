"""Issue 14, defects 1 and 2: a run's data is its own. The operator (kopf in-process) against the API
server emulator (tests/kube.py) and a real S3 server (tests/s3server.py); Jobs' work is done by the
test, which writes each task's outputs where the task would (the folder named by the Job's document).

    defect 1  deleting a run named `models` (cleanup: Delete) left s3://bucket/models/ wiped;
              two runs `demo` in two namespaces shared, and deleted, one folder
    defect 2  a re-created run of the same name (new uid, other policy) skipped prepare and training
              and went straight to the merge, on the old run's checkpoints
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import torch

from kwarp.core.crd import crd
from kwarp.core.ownership import OWNED_BY_ANOTHER_RUN, SPEC_DIGEST_MISMATCH, store_key
from kwarp.core.plan import checkpoint_outputs, file_outputs
from kwarp.core.spec import StorageSpec
from kwarp.core.weights import save_state_dict
from kwarp.operator import conditions as C
from kwarp.operator.jobs import WorkerSettings
from kwarp.operator.kube import Kube
from kwarp.operator.reconcile import Reconciler
from kwarp.store.s3 import S3Store

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for, wait_value
from .operator_harness import GROUP, PLURAL, VERSION, job_run, options, s3_secret
from .s3server import S3Server

NAMESPACES = ("team-a", "team-b")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


class World:
    """The cluster (two namespaces, each with the S3 Secret), the bucket, and a user's calls."""

    def __init__(self, cluster: Cluster, s3: S3Server, bucket: str):
        self.cluster, self.s3, self.bucket = cluster, s3, bucket
        client = cluster.client()
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        for ns in NAMESPACES:
            cluster.raw("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            self.core.create_namespaced_secret(ns, s3_secret())

    def storage(self, url: str) -> dict[str, Any]:
        return {"url": url, "endpoint": self.s3.endpoint, "secure": False, "secretName": "kwarp-s3"}

    def store(self, prefix: str = "") -> S3Store:
        url = f"s3://{self.bucket}/{prefix}".rstrip("/")
        return S3Store.from_url(url, StorageSpec.model_validate(self.storage(url)), env=self.s3.env())

    def warprun(self, name: str, url: str, policy: str = "s3://models/sft", **spec: Any) -> dict[str, Any]:
        body = {
            "policy": {"location": policy},
            "reward": {"callable": "kwarp.tasks.sentiment:reward"},
            "data": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl"},
            "storage": self.storage(url),
            "warp": {"iterations": 1, "policies": 2, "steps": 3},
            "evaluation": {"etas": [0.0, 1.0]},
            **spec,
        }
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WarpRun", "metadata": {"name": name}, "spec": body}

    def create(self, ns: str, doc: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)

    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete(self, ns: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        wait_for(lambda: self.get(ns, name) is None, 120, message=f"WarpRun {ns}/{name} gone")

    def jobs(self, ns: str) -> dict[str, dict[str, Any]]:
        items = self.cluster.raw("GET", f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]
        return {j["metadata"]["name"]: j for j in items}

    def jobs_of(self, ns: str, uid: str) -> set[str]:
        return {n for n, j in self.jobs(ns).items() if any(r["uid"] == uid for r in j["metadata"]["ownerReferences"])}

    def condition(self, ns: str, name: str, type_: str) -> dict[str, Any] | None:
        conds = ((self.get(ns, name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)


def tiny_checkpoint(store: S3Store, key: str, value: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_state_dict({"weight": torch.full((4,), value)}, Path(tmp), meta={"value": value})
        store.put_checkpoint(Path(tmp), key)


def do_job(world: World, job: dict[str, Any]) -> None:
    """Publish what the Job's task publishes, where the task would: the folder its document names."""
    run, task = job_run(job)
    store = S3Store.from_url(run.spec.storage.url, run.spec.storage, env=world.s3.env())
    folder = store_key(run)
    for key in checkpoint_outputs(run.spec, folder, task):
        tiny_checkpoint(store, key, float(task.iteration))
    for key in file_outputs(run.spec, folder, task):
        store.put_json(key, {"iteration": task.iteration, "groups": [], "seconds": 0.1})


def finish(world: World, runner: StatusJobRunner, ns: str, *names: str) -> None:
    jobs = wait_value(lambda: world.jobs(ns), lambda js: set(names) <= set(js), 120,
                      message=lambda: f"Jobs {names} in {ns}; have {sorted(world.jobs(ns))}")  # fmt: skip
    wait_for(lambda: set(names) <= set(runner.running()), 60, message=f"{names} running")
    for name in names:
        do_job(world, jobs[name])
        runner.succeed(name)


@pytest.fixture
def world(tmp_path: Path, s3: S3Server) -> Iterator[World]:
    with Cluster(tmp_path / "cluster", crds=[crd()]) as cluster:
        yield World(cluster, s3, s3.create_bucket())


def test_deleting_a_run_named_models_leaves_the_models_folder_alone(world: World) -> None:
    """Defect 1: cleanup: Delete of run `models` at s3://bucket removed s3://bucket/models/ (the users' models)."""
    root = world.store()
    tiny_checkpoint(root, "models/sft", 7.0)  # what docs/cluster.md tells users to keep beside the runs
    ns = "team-a"
    with StatusJobRunner(world.cluster, namespace=ns) as runner, \
            RunningOperator(world.cluster, options(namespaces=[ns], worker=WorkerSettings(image="w"))):  # fmt: skip
        uid = world.create(ns, world.warprun("models", f"s3://{world.bucket}", cleanup="Delete"))["metadata"]["uid"]
        finish(world, runner, ns, "models-prepare")
        wait_value(lambda: world.jobs(ns), lambda js: "models-i0-m0" in js, 120, message="members started")
        own = f"{ns}/models/{uid}"
        owned = root.list(f"{own}/")
        world.delete(ns, "models")

    assert root.has_checkpoint("models/sft")  # nothing outside the run's own folder was deleted ...
    root.verify_checkpoint("models/sft")
    assert {f"{own}/OWNER.json", f"{own}/warprun.json", f"{own}/base/MANIFEST.json"} <= set(owned)
    assert root.list(f"{own}/") == []  # ... and the run's own data went


def test_same_named_runs_in_two_namespaces_neither_share_nor_delete_each_others_data(world: World) -> None:
    """Defect 1: `demo` in team-a and `demo` in team-b used one folder <url>/demo/: b found a's prepare
    done (and trained on a's base), and b's cleanup deleted a's checkpoints."""
    url = f"s3://{world.bucket}/runs"
    runs = world.store("runs")
    with StatusJobRunner(world.cluster, namespace="team-a") as ra, \
            StatusJobRunner(world.cluster, namespace="team-b") as rb, \
            RunningOperator(world.cluster, options(namespaces=list(NAMESPACES), worker=WorkerSettings(image="w"))):  # fmt: skip
        a = world.create("team-a", world.warprun("demo", url))["metadata"]["uid"]
        finish(world, ra, "team-a", "demo-prepare")
        wait_value(lambda: world.jobs("team-a"), lambda js: "demo-i0-m0" in js, 120, message="a's members")

        b = world.create("team-b", world.warprun("demo", url, policy="s3://models/other", cleanup="Delete"))["metadata"]["uid"]
        # b starts with its own prepare: nothing of a's counts as done for b.
        assert wait_value(lambda: world.jobs_of("team-b", b), bool, 120, message="b's first Job") == {"demo-prepare"}
        finish(world, rb, "team-b", "demo-prepare")
        b_owned = runs.list(f"team-b/demo/{b}/")
        world.delete("team-b", "demo")

        assert runs.has_checkpoint(f"team-a/demo/{a}/base")  # a's data survived b's cleanup
        assert runs.get_json(f"team-a/demo/{a}/OWNER.json")["namespace"] == "team-a"
        assert f"team-b/demo/{b}/base/MANIFEST.json" in b_owned and runs.list("team-b/") == []


def test_a_recreated_run_with_another_policy_prepares_and_trains_again(world: World) -> None:
    """Defect 2: delete `demo` (Retain), re-apply it with another policy: the operator skipped prepare
    and training and created demo-i0-merge at once, merging the old run's members."""
    ns, url = "team-a", f"s3://{world.bucket}/runs"
    with StatusJobRunner(world.cluster, namespace=ns) as runner, \
            RunningOperator(world.cluster, options(namespaces=[ns], worker=WorkerSettings(image="w"))):  # fmt: skip
        old = world.create(ns, world.warprun("demo", url))["metadata"]["uid"]
        finish(world, runner, ns, "demo-prepare")
        finish(world, runner, ns, "demo-i0-m0", "demo-i0-m1")
        wait_value(lambda: world.jobs(ns), lambda js: "demo-i0-merge" in js, 120, message="the old run's merge")
        world.delete(ns, "demo")
        wait_for(lambda: not world.jobs(ns), 120, message="the old run's Jobs collected")

        new = world.create(ns, world.warprun("demo", url, policy="s3://models/other"))["metadata"]["uid"]
        assert new != old
        assert wait_value(lambda: world.jobs_of(ns, new), bool, 120, message="the new run's first Job") == {"demo-prepare"}
        finish(world, runner, ns, "demo-prepare")
        # A pass creates the members one POST after the other: a poll between them sees one member only.
        first = wait_value(lambda: world.jobs_of(ns, new), lambda js: {"demo-i0-m0", "demo-i0-m1"} <= js
                           or "demo-i0-merge" in js, 120, message="the new run's members (or the defect's merge)")  # fmt: skip
        assert first == {"demo-prepare", "demo-i0-m0", "demo-i0-m1"}  # trains again, no merge yet
    runs = world.store("runs")
    assert runs.has_checkpoint(f"{ns}/demo/{old}/iter-0/member-0/final")  # Retain kept the old run's data


def test_a_folder_owned_by_another_run_is_neither_used_nor_deleted(world: World) -> None:
    """The ownership record guards the folder: a record naming another run (or this run with another
    spec) stops the run with StoreConflict and no Jobs; cleanup: Delete then deletes nothing."""
    ns, url = "team-a", f"s3://{world.bucket}/runs"
    runs = world.store("runs")
    reconciler = Reconciler(Kube(world.cluster.client()), WorkerSettings(image="w"))
    uid = world.create(ns, world.warprun("demo", url, cleanup="Delete"))["metadata"]["uid"]
    folder = f"{ns}/demo/{uid}"
    foreign = {"namespace": "team-b", "name": "demo", "uid": "someone-else", "specDigest": "sha256:x", "executor": "operator"}
    runs.put_json(f"{folder}/OWNER.json", foreign)
    tiny_checkpoint(runs, f"{folder}/base", 1.0)

    outcome = reconciler.reconcile(ns, "demo")
    assert outcome is not None and outcome.phase == "Failed" and outcome.created == []
    cond = world.condition(ns, "demo", C.STORE_CONFLICT)
    assert cond is not None and cond["status"] == "True" and cond["reason"] == OWNED_BY_ANOTHER_RUN
    assert "team-b/demo (uid someone-else)" in cond["message"]
    assert world.jobs(ns) == {}

    reconciler.cleanup(ns, "demo", world.get(ns, "demo") or {})
    assert runs.has_checkpoint(f"{folder}/base") and runs.get_json(f"{folder}/OWNER.json") == foreign

    # This run's record, written by another spec: not continued either.
    runs.put_json(f"{folder}/OWNER.json", {**foreign, "namespace": ns, "uid": uid})
    reconciler.reconcile(ns, "demo")
    cond = world.condition(ns, "demo", C.STORE_CONFLICT)
    assert cond is not None and cond["reason"] == SPEC_DIGEST_MISMATCH and world.jobs(ns) == {}

    # The record removed (the user's fix): the run claims its folder and carries on; the condition clears.
    runs.delete_prefix(f"{folder}/OWNER.json")
    outcome = reconciler.reconcile(ns, "demo")
    assert outcome is not None and outcome.phase != "Failed"
    assert world.jobs_of(ns, uid) == {"demo-i0-m0", "demo-i0-m1"}  # base was there already
    assert (world.condition(ns, "demo", C.STORE_CONFLICT) or {}).get("status") == "False"
    assert runs.get_json(f"{folder}/OWNER.json")["uid"] == uid


def test_storage_outside_the_allowed_prefixes_gets_a_condition_and_no_jobs(world: World) -> None:
    ns = "team-a"
    opts = options(namespaces=[ns], worker=WorkerSettings(image="w"),
                   storage_prefixes=(f"s3://{world.bucket}/runs",))  # fmt: skip
    with StatusJobRunner(world.cluster, namespace=ns), RunningOperator(world.cluster, opts):
        outside = world.create(ns, world.warprun("outside", f"s3://{world.bucket}/runs-elsewhere", cleanup="Delete"))
        world.create(ns, world.warprun("inside", f"s3://{world.bucket}/runs/team-a"))
        cond = wait_value(lambda: world.condition(ns, "outside", C.STORAGE_NOT_ALLOWED), bool, 120,
                          message="StorageNotAllowed on run outside")  # fmt: skip
        assert cond["status"] == "True" and cond["reason"] == C.OUTSIDE_ALLOWED_PREFIXES
        assert f"s3://{world.bucket}/runs-elsewhere" in cond["message"]
        wait_value(lambda: world.jobs(ns), lambda js: "inside-prepare" in js, 120, message="run inside starts")
        assert (world.get(ns, "outside") or {})["status"]["phase"] == "Failed"
        assert not any(n.startswith("outside-") for n in world.jobs(ns))
        assert world.store().list("runs-elsewhere/") == []  # not even an ownership record
        # Deleting it touches nothing there either, even where its folder would be.
        somebodys = f"runs-elsewhere/{ns}/outside/{outside['metadata']['uid']}/keep.json"
        world.store().put_json(somebodys, {"keep": True})
        world.delete(ns, "outside")
    assert world.store().get_json(somebodys) == {"keep": True}


def test_the_operator_reads_the_allowed_prefixes_from_its_environment() -> None:
    from kwarp.operator.cli import allowed_prefixes

    assert allowed_prefixes({"KWARP_STORAGE_ALLOWED_PREFIXES": "s3://kwarp/runs, /data/runs"}) == ("s3://kwarp/runs", "/data/runs")
    assert allowed_prefixes({}) == ()
    with pytest.raises(Exception, match="neither"):
        allowed_prefixes({"KWARP_STORAGE_ALLOWED_PREFIXES": "runs"})
