"""End to end on the Kubernetes API emulator: a WarpRun with spec.export ends with the export Job.

The WarpRun is created suspended; its own folder in the store (a moto S3 bucket),
`<namespace>/<name>/<uid>/`, is then filled with a finished one-iteration run whose every task was done
by the product's own commands (the members are tiny real models; `kwarp merge` and `kwarp eval` wrote
the SLERP, merge.json and the front), and the run is resumed. The operator, seeing every training task
done, plans the one task left: `<run>-export`. ProcessJobRunner runs its container command (`kwarp export`, spec from KWARP_SPEC,
S3 credentials from the Secret) as a local process; the status then carries the exported location and
its measured point, read back from the store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kwarp.cli import main as kwarp_main
from kwarp.core.crd import crd
from kwarp.core.front import points_of, within_budget
from kwarp.core.guardrails import Guardrails
from kwarp.core.ownership import run_key
from kwarp.core.spec import StorageSpec
from kwarp.operator import conditions as C
from kwarp.operator.jobs import WorkerSettings
from kwarp.store import layout
from kwarp.store.s3 import S3Store

from .kube import Cluster, ProcessJobRunner, RunningOperator, wait_value
from .models import tiny_gpt2
from .operator_harness import NS, WAIT, Api, options, s3_secret
from .prom import free_port, sample, scrape
from .s3server import S3Server, s3_server
from .test_export import REWARD_MODULE, _towards_vowels

RUN = "exp"
PROMPTS = ["hello", "the cat", "once upon a", "why", "so", "abc", "tell me", "a b c"]

s3 = pytest.fixture(scope="module")(s3_server)


def warprun(bucket: str, storage: dict[str, Any], export: dict[str, Any] | None = None,
            metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "policy": {"location": f"s3://{bucket}/inputs/sft", "dtype": "float32"},
        "reward": {"callable": "kwarp_export_e2e_rewards:vowels"},
        "data": {"train": f"s3://{bucket}/inputs/prompts.jsonl", "eval": f"s3://{bucket}/inputs/prompts.jsonl"},
        "warp": {"iterations": 1, "policies": 2, "steps": 2},
        "training": {"maxNewTokens": 8, "temperature": 1.0, "seed": 4},
        "evaluation": {"etas": [0.0, 0.5, 1.0], "prompts": 8, "samplesPerPrompt": 8, "batchSize": 8},
        "storage": storage,
        "resources": {"trainer": {"gpus": 0}, "evaluation": {"gpus": 0}},
        "failurePolicy": {"maxRetries": 0},
    }
    if export is not None:
        spec["export"] = export
    return {"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": metadata or {"name": RUN}, "spec": spec}


def finished_run(tmp_path: Path, s3: S3Server, bucket: str, storage_doc: dict[str, Any], uid: str,
                 export: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill the run's folder <ns>/<run>/<uid> with a finished run, every task done by the product's commands
    (given the document with the run's identity, as the operator hands it to a task); return its front."""
    store = S3Store.from_url(f"s3://{bucket}", StorageSpec.model_validate(storage_doc), env=s3.env())
    base = tiny_gpt2(tmp_path / "models" / "sft")  # the same weights on every call (seeded)
    store.put_checkpoint(base, "inputs/sft")
    store.put_bytes("inputs/prompts.jsonl", "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS).encode())
    runs = S3Store.from_url(storage_doc["url"], StorageSpec.model_validate(storage_doc), env=s3.env())
    folder = run_key(NS, RUN, uid)
    runs.put_checkpoint(base, layout.base(folder))  # what `kwarp prepare` publishes
    for m, strength in enumerate((6.0, 4.0)):  # two members moved towards vowels by different amounts
        runs.put_checkpoint(_towards_vowels(base, tmp_path / "models" / f"m{m}", strength), layout.member_final(folder, 0, m))
    spec_file = tmp_path / f"warprun-{uid}.json"
    spec_file.write_text(json.dumps(warprun(bucket, storage_doc, export, metadata={"name": RUN, "namespace": NS, "uid": uid})))
    assert kwarp_main(["merge", "--iteration", "0", "--spec", str(spec_file)]) == 0
    assert kwarp_main(["eval", "--iteration", "0", "--spec", str(spec_file), "--device", "cpu"]) == 0
    return runs.get_json(layout.eval_json(folder, 0))


def test_the_operator_exports_the_policy_in_a_final_job_and_reports_it_in_status(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reward function must be importable by this process and by the Job's process (PYTHONPATH passes on).
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "kwarp_export_e2e_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.setenv("PYTHONPATH", str(modules))
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KWARP_CACHE", str(tmp_path / "cache"))
    bucket = s3.create_bucket()
    storage_doc = {"url": f"s3://{bucket}/runs", "endpoint": s3.endpoint, "secure": False, "secretName": "kwarp-s3"}
    destination = f"s3://{bucket}/policies/exp-kl"
    # The budget lies between the front's η = 0.5 and η = 1 points. spec.export is fixed when the run is
    # created (it may not change later), before its folder exists: so the front is first made in a probe
    # folder, by the same commands the run's folder is filled with below.
    probe = finished_run(tmp_path, s3, bucket, storage_doc, "probe")
    front = {p["eta"]: p for p in probe["front"]}
    budget = (front[0.5]["kl"] + front[1.0]["kl"]) / 2
    export = {"klBudget": budget, "to": destination}

    with Cluster(tmp_path / "cluster", crds=[crd()]) as cluster:
        api = Api(cluster)
        api.core.create_namespaced_secret(NS, s3_secret())
        # The cluster admin allows the test's reward module (the guardrails allow only kwarp.tasks by default)
        # and the export's destination (by default only the run's own folder).
        port = free_port()
        opts = options(resync_seconds=30, worker=WorkerSettings(image="kwarp-worker:e2e"), metrics_port=port,
                       bind_address="127.0.0.1",
                       guardrails=Guardrails(reward_callables=("kwarp.tasks", "kwarp_export_e2e_rewards"),
                                             export_prefixes=(f"s3://{bucket}/policies",)))
        with ProcessJobRunner(cluster, tmp_path / "pods", parallel=1) as runner, RunningOperator(cluster, opts):
            # The run is created suspended, its own folder filled with the finished run, then resumed.
            doc = warprun(bucket, storage_doc, export)
            doc["spec"]["suspend"] = True
            uid = api.create(doc)["metadata"]["uid"]
            evaluation = finished_run(tmp_path, s3, bucket, storage_doc, uid, export)
            assert evaluation["front"] == probe["front"]  # the same commands on the same inputs: the same front
            api.patch_spec({"suspend": False}, RUN)

            def finished(st: dict[str, Any]) -> bool:
                if st.get("phase") == "Failed":
                    raise AssertionError(f"the run failed: {json.dumps(st.get('conditions'))}; "
                                         f"logs: { {n: runner.log_tail(n) for n in runner.logs} }")  # fmt: skip
                return st.get("phase") == "Succeeded"

            st = wait_value(lambda: api.status(RUN), finished, 240, message="phase Succeeded")
            assert not runner.errors, runner.errors
            deadline = time.monotonic() + 60  # the runner writes the Job's status a moment after the store shows it done
            while time.monotonic() < deadline and not _complete(api.jobs(RUN).get(f"{RUN}-export")):
                time.sleep(0.5)
            jobs = api.jobs(RUN)
            # The dashboard's exported point: the operator's /metrics carry status.export's η, reward and KL.
            url, labels = f"http://127.0.0.1:{port}/metrics", {"namespace": NS, "run": RUN}
            point = wait_value(lambda: tuple(sample(scrape(url), f"kwarp_run_export_{k}", **labels)
                                             for k in ("eta", "reward", "kl")),
                               lambda p: None not in p, WAIT, message="kwarp_run_export_* in /metrics")  # fmt: skip

    # Only the export was left to do: one Job, the export component, complete.
    assert list(jobs) == [f"{RUN}-export"], list(jobs)
    job = jobs[f"{RUN}-export"]
    assert _complete(job)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert (container["name"], container["command"], container["args"]) == ("export", ["kwarp"], ["export"])

    # The status: where the policy is, the η the front gave for the budget, and what the policy measured.
    store = S3Store.from_url(f"s3://{bucket}/runs", StorageSpec.model_validate(storage_doc), env=s3.env())
    record = store.get_json(layout.export_json(run_key(NS, RUN, uid)))
    exported = st["export"]
    assert exported["location"] == destination and st["checkpoints"]["export"] == destination
    assert exported["eta"] == pytest.approx(within_budget(points_of(evaluation), budget).eta)
    assert 0.5 < exported["eta"] < 1.0  # the budget lies between the two evaluated points
    assert exported["klBudget"] == pytest.approx(budget)
    for key, field in (("reward", "reward"), ("kl", "kl"), ("reward_stderr", "rewardStderr"), ("kl_stderr", "klStderr")):
        assert exported[field] == pytest.approx(record["measured"][key]), field
    assert exported["kl"] <= budget + exported["klStderr"] and exported["withinBudget"] is True
    assert point == (exported["eta"], exported["reward"], exported["kl"])
    ready = next(c for c in st["conditions"] if c["type"] == C.READY)
    assert ready["status"] == "True" and "exported" in ready["message"]

    # The policy itself: a complete checkpoint at the destination, with its card.
    policies = S3Store.from_url(f"s3://{bucket}/policies", StorageSpec.model_validate(storage_doc), env=s3.env())
    assert policies.has_checkpoint("exp-kl")
    folder = policies.verify_checkpoint("exp-kl") and policies.open_checkpoint("exp-kl")
    assert json.loads((folder / "kwarp-export.json").read_text())["eta"] == exported["eta"]
    assert "most reward within KL" in (folder / "README.md").read_text()


def _complete(job: dict[str, Any] | None) -> bool:
    return job is not None and any(c["type"] == "Complete" and c["status"] == "True"
                                   for c in (job.get("status") or {}).get("conditions") or [])  # fmt: skip
