"""End to end: a WarpRun (I = 2, M = 2) goes from `kubectl apply` to Succeeded through real task processes.

    API server   tests/kube.py's emulator, over HTTP
    operator     kwarp.operator, kopf in-process
    kubelet      ProcessJobRunner: runs each Job's container command (`kwarp prepare|train|merge|eval`)
                 as a local process with the Job's environment, S3 credentials read from the Secret
    store        a moto S3 server on loopback: inputs, checkpoints and fronts all live in one bucket

Inputs: a tiny random GPT-2 (tests/models.py) as θ_sft, the sentiment task's scoring function as the
reward, a handful of prompts; two REINFORCE steps per member. Nothing here is faked: every checkpoint
in the bucket was written by a task process, and the status is what the operator read back from it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kwarp.core.crd import crd
from kwarp.core.spec import StorageSpec
from kwarp.operator import conditions as C
from kwarp.operator.app import OperatorOptions
from kwarp.operator.jobs import WorkerSettings
from kwarp.store import layout
from kwarp.store.s3 import S3Store

from .kube import Cluster, ProcessJobRunner, RunningOperator, wait_value
from .models import tiny_gpt2
from .operator_harness import NS, Api, options, s3_secret
from .s3server import S3Server

PROMPTS = ["The film was", "I thought the movie", "This restaurant is", "The service here",
           "My new phone is", "The book felt", "Our hotel room", "The concert was"]  # fmt: skip
ETAS = [0.0, 0.5, 1.0]
RUN = "e2e"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def upload_inputs(s3: S3Server, bucket: str, storage: StorageSpec, tmp_path: Path) -> None:
    store = S3Store.from_url(f"s3://{bucket}", storage, env=s3.env())
    store.put_checkpoint(tiny_gpt2(tmp_path / "sft"), "inputs/sft")
    lines = "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    store.put_bytes("inputs/train.jsonl", (lines * 2).encode())
    store.put_bytes("inputs/eval.jsonl", lines.encode())


def warprun(bucket: str, storage: dict[str, Any], name: str = RUN, **sections: Any) -> dict[str, Any]:
    """The WarpRun over the inputs in `bucket`; `sections` replace the spec's (None drops one: its defaults)."""
    spec = {
        "policy": {"location": f"s3://{bucket}/inputs/sft", "dtype": "float32"},
        "reward": {"callable": "kwarp.tasks.sentiment:true_score"},
        "data": {"train": f"s3://{bucket}/inputs/train.jsonl", "eval": f"s3://{bucket}/inputs/eval.jsonl"},
        "warp": {"iterations": 2, "policies": 2, "steps": 2, "litiEta": 0.5},
        "training": {"batchSize": 4, "samplesPerPrompt": 2, "learningRate": 1e-3, "warmupSteps": 0,
                     "maxPromptTokens": 16, "maxNewTokens": 6, "checkpointInterval": 1},  # fmt: skip
        "evaluation": {"etas": ETAS, "prompts": 4, "batchSize": 4},
        "storage": storage,
        "resources": {"trainer": {"gpus": 0}, "evaluation": {"gpus": 0}},
        "failurePolicy": {"maxRetries": 0},
    } | sections
    return {"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": name},
            "spec": {k: v for k, v in spec.items() if v is not None}}  # fmt: skip


@dataclass(frozen=True)
class Inputs:
    """A bucket of the S3 server holding a run's inputs, and the WarpRun's spec.storage for runs kept in it."""

    bucket: str
    storage_doc: dict[str, Any]
    storage: StorageSpec

    def document(self, name: str = RUN, endpoint: str | None = None, **sections: Any) -> dict[str, Any]:
        """A WarpRun over these inputs, kept in this bucket; `endpoint`: where its tasks reach the store (a
        fault proxy in front of the S3 server), else the server; `sections` replace the spec's (warprun())."""
        storage = self.storage_doc if endpoint is None else {**self.storage_doc, "endpoint": endpoint}
        return warprun(self.bucket, storage, name, **sections)

    def store(self, s3: S3Server) -> S3Store:
        """The runs' store, reached directly (the tasks of a document with an `endpoint` go through it)."""
        return S3Store.from_url(f"s3://{self.bucket}/runs", self.storage, env=s3.env())


def uploaded(s3: S3Server, tmp_path: Path) -> Inputs:
    bucket = s3.create_bucket()
    storage_doc = {"url": f"s3://{bucket}/runs", "endpoint": s3.endpoint, "secure": False, "secretName": "kwarp-s3"}
    inputs = Inputs(bucket, storage_doc, StorageSpec.model_validate(storage_doc))
    upload_inputs(s3, bucket, inputs.storage, tmp_path)
    return inputs


@contextlib.contextmanager
def e2e_cluster(tmp_path: Path, image: str = "kwarp-worker:e2e") -> Iterator[tuple[Cluster, Api, OperatorOptions]]:
    """The API server with the S3 credentials' Secret, and the operator's options for task processes."""
    with Cluster(tmp_path / "cluster", crds=[crd()]) as cluster:
        api = Api(cluster)
        api.core.create_namespaced_secret(NS, s3_secret())
        yield cluster, api, options(resync_seconds=30, worker=WorkerSettings(image=image))


def test_a_warprun_reaches_succeeded_with_its_checkpoints_in_the_bucket(
    tmp_path: Path, s3: S3Server
) -> None:
    inputs = uploaded(s3, tmp_path)
    bucket = inputs.bucket

    with e2e_cluster(tmp_path) as (cluster, api, opts):
        with ProcessJobRunner(cluster, tmp_path / "pods", parallel=2) as runner, RunningOperator(cluster, opts):
            api.create(inputs.document())
            st = succeeded_within(api, runner, 300)
            assert not runner.errors, runner.errors

            # The store can show the last task done a moment before the runner writes its Job's
            # status back (as with a real kubelet): wait for every Job to report Complete.
            def complete(j: dict) -> bool:
                return any(c["type"] == "Complete" and c["status"] == "True"
                           for c in (j.get("status") or {}).get("conditions") or [])  # fmt: skip

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                jobs = api.jobs(RUN)
                if len(jobs) == 9 and all(complete(j) for j in jobs.values()):
                    break
                time.sleep(0.5)
        assert len(jobs) == 9
        folder = f"{NS}/{RUN}/{api.get(RUN)['metadata']['uid']}"  # the run's own folder in the bucket
        assert all(complete(j) for j in jobs.values()), {n: j.get("status") for n, j in jobs.items()}

    # The status: a Pareto front per iteration, read from the eval.json the evaluation tasks wrote.
    store = inputs.store(s3)
    fronts = [store.get_json(layout.eval_json(folder, i)) for i in range(2)]
    assert [f["iteration"] for f in st["pareto"]] == [0, 1]
    for front, report in zip(st["pareto"], fronts, strict=True):
        assert [p["eta"] for p in front["points"]] == ETAS
        assert [(p["reward"], p["kl"]) for p in front["points"]] == [(p["reward"], p["kl"]) for p in report["front"]]
        assert all(math.isfinite(p["reward"]) and math.isfinite(p["kl"]) for p in front["points"])
    at_eta = next(p for p in fronts[1]["front"] if p["eta"] == 0.5)
    assert (st["reward"], st["kl"]) == (at_eta["reward"], at_eta["kl"])
    assert st["pareto"][0]["points"][0]["kl"] == 0.0  # η = 0 is θ_sft itself
    assert sorted((m["iteration"], m["member"], m["state"]) for m in st["members"]) == [
        (0, 0, "Succeeded"), (0, 1, "Succeeded"), (1, 0, "Succeeded"), (1, 1, "Succeeded")]
    assert all(m["reward"] is not None and m["kl"] is not None for m in st["members"])
    assert st["checkpoints"]["final"] == f"s3://{bucket}/runs/{folder}/iter-1/slerp"
    assert next(c for c in st["conditions"] if c["type"] == C.READY)["status"] == "True"

    # The checkpoints: in the bucket, complete, and their bytes match their manifests.
    keys = [layout.base(folder), layout.init(folder, 1), layout.slerp(folder, 0), layout.slerp(folder, 1)]
    keys += [layout.member_final(folder, i, m) for i in range(2) for m in range(2)]
    for key in keys:
        assert store.has_checkpoint(key), key
    manifest = store.verify_checkpoint(layout.slerp(folder, 1))
    assert any(f.name.endswith(".safetensors") for f in manifest.files)
    objects = {o.object_name for o in s3.client().list_objects(bucket, prefix=f"runs/{folder}/", recursive=True)}
    assert f"runs/{layout.member_final(folder, 1, 1)}/MANIFEST.json" in objects
    assert store.get_json(f"{folder}/OWNER.json")["uid"] == folder.rsplit("/", 1)[1]  # written by the operator
    assert store.get_json(layout.spec_json(folder))["metadata"]["uid"] == folder.rsplit("/", 1)[1]  # and the document


def test_a_queued_run_trains_each_iteration_as_one_gang_job_of_real_member_processes(tmp_path: Path, s3: S3Server) -> None:
    """spec.queueName: Kueue (the stand-in) admits the iteration's gang Job; its two pods are two `kwarp train
    --iteration 0` processes that take their member from $KWARP_MEMBER (the completion index, by fieldRef)."""
    from .kueue import KueueStandIn

    inputs = uploaded(s3, tmp_path)
    doc = inputs.document()
    doc["spec"]["queueName"] = "team-a"
    doc["spec"]["warp"]["iterations"] = 1

    with e2e_cluster(tmp_path) as (cluster, api, opts):
        with (KueueStandIn(cluster, "team-a", {"pods": 2, "nvidia.com/gpu": 0}) as queue,
              ProcessJobRunner(cluster, tmp_path / "pods", parallel=2) as runner, RunningOperator(cluster, opts)):  # fmt: skip
            api.create(doc)
            st = succeeded_within(api, runner, 300)
            assert not runner.errors and not queue.errors, (runner.errors, queue.errors)
        assert queue.admissions[:2] == ["e2e-prepare", "e2e-i0-members"]
        assert sorted(api.jobs(RUN)) == ["e2e-i0-eval", "e2e-i0-members", "e2e-i0-merge", "e2e-prepare"]
        folder = f"{NS}/{RUN}/{api.get(RUN)['metadata']['uid']}"
    assert sorted((m["member"], m["job"], m["state"]) for m in st["members"]) == [
        (0, "e2e-i0-members", "Succeeded"), (1, "e2e-i0-members", "Succeeded")]
    store = inputs.store(s3)
    for m in range(2):  # each pod trained its own member (its log says which)
        assert store.has_checkpoint(layout.member_final(folder, 0, m))
    logs = (tmp_path / "pods" / "e2e-i0-members.log").read_text()
    assert "i0 m0 done" in logs and "i0 m1 done" in logs


def succeeded_within(api: Api, runner: ProcessJobRunner, timeout: float) -> dict[str, Any]:
    """The run's status once Succeeded; failing that, an error with the status and every pod's log tail."""
    try:
        return phase_is_within(api, "Succeeded", timeout)
    except AssertionError:
        failing = {n: runner.log_tail(n) for n in runner.logs}
        raise AssertionError(f"status: {json.dumps(api.status(RUN))[:3000]}\nlogs: {failing}") from None


def phase_is_within(api: Api, phase: str, timeout: float) -> dict[str, Any]:
    def failed(st: dict[str, Any]) -> bool:
        if st.get("phase") == "Failed":
            raise AssertionError(f"the run failed: {json.dumps(st.get('conditions'))}")
        return st.get("phase") == phase

    return wait_value(lambda: api.status(RUN), failed, timeout, message=f"phase {phase}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_node_member_rendezvous_and_the_iteration_merges(tmp_path: Path, s3: S3Server, strategy: str) -> None:
    """resources.trainer.nodes: 2: each member is an Indexed Job of two pods (two local processes here)
    that find each other through the headless Service's host name and train as one member over gloo,
    replicated (ddp) or sharded across the two nodes (fsdp)."""
    inputs = uploaded(s3, tmp_path)
    doc = inputs.document()
    doc["spec"]["warp"].update(iterations=1)
    doc["spec"]["resources"]["trainer"] = {"gpus": 0, "nodes": 2}
    doc["spec"]["training"]["strategy"] = strategy

    with e2e_cluster(tmp_path) as (cluster, api, opts), \
            ProcessJobRunner(cluster, tmp_path / "pods", parallel=2) as runner, RunningOperator(cluster, opts):
        api.create(doc)
        st = succeeded_within(api, runner, 600)
        assert not runner.errors, runner.errors
        jobs = api.jobs(RUN)
        services = {s["metadata"]["name"] for s in cluster.raw("GET", f"/api/v1/namespaces/{NS}/services")["items"]}
        logs = {n: runner.logs[n].read_text() for n in ("e2e-i0-m0", "e2e-i0-m1")}
        folder = f"{NS}/{RUN}/{api.get(RUN)['metadata']['uid']}"  # the run's own folder in the bucket

    for m in (0, 1):
        job = jobs[f"e2e-i0-m{m}"]["spec"]
        assert (job["completionMode"], job["completions"]) == ("Indexed", 2)
        assert f"e2e-i0-m{m}" in services
        # One member, two pods, one process each: world size 2, and the main process reported alone.
        assert f"2 process(es) on cpu ({strategy})" in logs[f"e2e-i0-m{m}"]
    store = inputs.store(s3)
    for m in (0, 1):
        state = json.loads((store.open_checkpoint(layout.member_state(folder, 0, m)) / "trainer_state.json").read_text())
        assert state["world_size"] == 2
    assert store.has_checkpoint(layout.slerp(folder, 0))  # the members merged
    assert sorted((m["member"], m["state"]) for m in st["members"]) == [(0, "Succeeded"), (1, "Succeeded")]


def test_a_queued_gang_of_two_node_members_is_admitted_whole_and_each_member_meets_at_its_rank_zero_pod(
    tmp_path: Path, s3: S3Server
) -> None:
    """spec.queueName with resources.trainer.nodes: 2 and M = 2: the iteration is ONE Indexed Job of 4 pods,
    admitted whole by the Kueue stand-in (quota: 4 pods). Each pod runs `kwarp gang-node`, which makes pods 0, 1
    member 0 and pods 2, 3 member 1 and points each pair at its rank-0 pod (<job>-0 / <job>-2 in the gang's
    Service) before torchrun; each pair trains one member over gloo (world size 2), and the members merge."""
    from .kueue import KueueStandIn

    inputs = uploaded(s3, tmp_path)
    doc = inputs.document()
    doc["spec"]["queueName"] = "team-a"
    doc["spec"]["warp"]["iterations"] = 1
    doc["spec"]["resources"]["trainer"] = {"gpus": 0, "nodes": 2}

    with e2e_cluster(tmp_path) as (cluster, api, opts):
        with (KueueStandIn(cluster, "team-a", {"pods": 4, "nvidia.com/gpu": 0}) as queue,
              ProcessJobRunner(cluster, tmp_path / "pods", parallel=2) as runner, RunningOperator(cluster, opts)):  # fmt: skip
            api.create(doc)
            st = succeeded_within(api, runner, 600)
            assert not runner.errors and not queue.errors, (runner.errors, queue.errors)
            gang = api.jobs(RUN)["e2e-i0-members"]
            services = {s["metadata"]["name"]: s for s in cluster.raw("GET", f"/api/v1/namespaces/{NS}/services")["items"]}
            folder = f"{NS}/{RUN}/{api.get(RUN)['metadata']['uid']}"
        assert queue.admissions[:2] == ["e2e-prepare", "e2e-i0-members"]
        assert sorted(api.jobs(RUN)) == ["e2e-i0-eval", "e2e-i0-members", "e2e-i0-merge", "e2e-prepare"]

    assert (gang["spec"]["completionMode"], gang["spec"]["completions"], gang["spec"]["parallelism"]) == ("Indexed", 4, 4)
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in gang["status"]["conditions"])
    service = services["e2e-i0-members"]  # the gang's headless Service, owned by its Job
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["ownerReferences"][0]["uid"] == gang["metadata"]["uid"]
    log = (tmp_path / "pods" / "e2e-i0-members.log").read_text()
    for m in (0, 1):  # each pod found its place, and each member trained as 2 processes
        for rank in (0, 1):
            assert f"kwarp gang-node: node {rank} of member {m} (2 nodes), rendezvous at 127.0.0.1:" in log
        assert f"i0 m{m} done" in log
    assert log.count("2 process(es) on cpu (ddp)") == 2, log[-3000:]
    store = inputs.store(s3)
    for m in (0, 1):
        state = json.loads((store.open_checkpoint(layout.member_state(folder, 0, m)) / "trainer_state.json").read_text())
        assert state["world_size"] == 2
    assert store.has_checkpoint(layout.slerp(folder, 0))  # the members merged
    assert sorted((m["member"], m["job"], m["state"]) for m in st["members"]) == [
        (0, "e2e-i0-members", "Succeeded"), (1, "e2e-i0-members", "Succeeded")]
