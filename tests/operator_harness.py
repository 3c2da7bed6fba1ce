"""The harness of the operator tests: a WarpRun document, what a finished task would have written, the
user's calls through the kubernetes client (Api), the operator's options, and the pytest fixtures that
start the API-server emulator, a test-side Job controller and the operator
(in tests/conftest.py, so that every test module finds them).

Shared by tests/test_operator*.py, test_rbac.py, test_kubectl.py and the benchmarks that drive the
operator; the tests themselves live in those files.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes

from kwarp.core.ownership import store_key
from kwarp.core.plan import Task, checkpoint_outputs, file_outputs
from kwarp.core.spec import SPEC_ENV, WarpRun, parse
from kwarp.core.weights import save_state_dict
from kwarp.operator.app import OperatorOptions
from kwarp.operator.jobs import LABEL_RUN, LABEL_TASK, WorkerSettings
from kwarp.store import layout

from .kube import Cluster, StatusJobRunner, wait_for, wait_value
from .s3server import ACCESS_KEY, SECRET_KEY

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "kwarp-worker:test"
NS = "default"
GROUP, VERSION, PLURAL = "kwarp.dev", "v1alpha1", "warpruns"
# How long the helpers below wait for the operator to react. A wait that is met returns at once, so this
# only bounds a failing test; it is generous because the suite also runs on loaded 2-core machines,
# where a 20 s limit failed now and then with the operator merely slow.
WAIT = 60.0


# ------------------------------------------------------------------ what a task would have written


def job_run(job: dict[str, Any]) -> tuple[WarpRun, Task]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    spec_json = next(e["value"] for e in container["env"] if e["name"] == SPEC_ENV)
    return parse(json.loads(spec_json)), Task.parse_id(job["metadata"]["labels"][LABEL_TASK])


def write_outputs(job: dict[str, Any]) -> None:
    """Publish what the Job's task publishes, as the task would (checkpoints verified by their manifest).

    torch is imported here, not with the module: benchmarks/operator.py imports this module in the process
    that hosts the operator, and the production operator's image holds no torch (its ~170k objects would
    lengthen every full garbage collection of that process); the pods that call this run elsewhere."""
    import torch

    run, task = job_run(job)
    root = Path(run.spec.storage.url)
    folder = store_key(run)  # the run's own folder: <namespace>/<name>/<uid>
    for key in checkpoint_outputs(run.spec, folder, task):
        save_state_dict({"weight": torch.full((4,), float(task.iteration))}, root / key, meta={"task": task.id})
    if task.kind == "train":
        log = root / layout.member_log(folder, task.iteration, task.member)
        _write_whole(log, json.dumps({"step": 1, "reward": 0.1, "eval": {"reward": 0.5 + task.member / 10, "kl_sft": 2.0}}) + "\n")
    for key in file_outputs(run.spec, folder, task):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if task.kind == "eval":
            i = task.iteration
            front = [{"eta": eta, "reward": round(0.2 + i * 0.1 + eta, 4), "kl": round(5 * eta * (i + 1), 4),
                      "reward_stderr": 0.01, "kl_stderr": 0.1, "length": 10} for eta in run.spec.evaluation.etas]  # fmt: skip
            members = [{"member": m, "reward": 0.6 + m / 100, "reward_stderr": 0.01, "kl": 3.0 + m, "kl_stderr": 0.1}
                       for m in range(run.spec.warp.policies)]  # fmt: skip
            _write_whole(path, json.dumps({"iteration": i, "reference": "sft", "etas": run.spec.evaluation.etas,
                                           "front": front, "members": members}))  # fmt: skip
        else:
            _write_whole(path, json.dumps({"iteration": task.iteration, "groups": [], "seconds": 0.1}))


def _write_whole(path: Path, text: str) -> None:
    """Write a file as the stores do (a temporary file renamed into place): a task is done once its last
    file exists (kwarp.core.observe.task_done), so a pass running beside a plain write_text could see that
    file empty, count the task done and miss its contents (an eval.json read as no front: a run Succeeded
    with the previous iteration's reward, once in a CI run)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def completes(job: dict[str, Any]) -> tuple[bool, str]:
    write_outputs(job)
    return True, ""


# ------------------------------------------------------------------ fixtures and helpers


def warprun(store: Path, name: str = "demo", **spec: Any) -> dict[str, Any]:
    body = {
        "policy": {"location": "/models/sft"},
        "reward": {"callable": "kwarp.tasks.sentiment:reward"},
        "data": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl"},
        "storage": {"url": str(store)},
        "warp": {"iterations": 2, "policies": 2, "steps": 3},
        "evaluation": {"etas": [0.0, 0.3, 1.0]},
        "failurePolicy": {"maxRetries": 1},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WarpRun", "metadata": {"name": name}, "spec": body}


class Api:
    """The calls a user (kubectl) would make, through the kubernetes client."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        client = cluster.client()
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, doc)

    def get(self, name: str = "demo") -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def status(self, name: str = "demo") -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def patch_spec(self, patch: dict[str, Any], name: str = "demo") -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, {"spec": patch},
                                                   _content_type="application/merge-patch+json")  # fmt: skip

    def delete(self, name: str = "demo") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)

    def jobs(self, run: str = "demo") -> dict[str, dict[str, Any]]:
        items = self.cluster.raw("GET", f"/apis/batch/v1/namespaces/{NS}/jobs", query=[("labelSelector", f"{LABEL_RUN}={run}")])
        return {j["metadata"]["name"]: j for j in items["items"]}

    def events(self) -> list[tuple[str, str, str]]:
        items = self.cluster.raw("GET", f"/api/v1/namespaces/{NS}/events")["items"]
        return [(e.get("type"), e.get("reason"), e.get("message")) for e in items]

    def history(self, path: str) -> list[dict[str, Any]]:
        """Every version of the objects at `path` (e.g. /apis/batch/v1/namespaces/default/jobs) the API
        server journalled, oldest first: a watch from resourceVersion 1, as a real API server serves one
        within its compaction window. Ends after 1 s without news."""
        response = self.custom.api_client.call_api(
            path, "GET", query_params=[("watch", "true"), ("resourceVersion", "1"), ("timeoutSeconds", "1")],
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True,
        )  # fmt: skip
        return [json.loads(line)["object"] for line in response.data.decode().splitlines() if line.strip()]

    def folder(self, name: str = "demo", namespace: str = NS) -> str:
        """The run's own folder in its store: <namespace>/<name>/<uid>."""
        return f"{namespace}/{name}/{(self.get(name) or {})['metadata']['uid']}"

    def condition(self, type_: str, name: str = "demo") -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)


def options(**overrides: Any) -> OperatorOptions:
    """The tests' operator options. `collections=None`: the operators the tests start share the test process,
    whose collector settings they must not change (tests/test_operator_collector.py checks serve applies its
    policy; benchmarks/operator.py passes the production default)."""
    base: dict[str, Any] = dict(namespaces=[NS], metrics_port=None, liveness_port=None, standalone=True,
                                resync_seconds=600, worker=WorkerSettings(image=IMAGE), collections=None)  # fmt: skip
    base.update(overrides)
    return OperatorOptions(**base)


def jobs_named(api: Api, *names: str) -> dict[str, dict[str, Any]]:
    return wait_value(api.jobs, lambda jobs: set(names) <= set(jobs), WAIT,
                      message=lambda: f"Jobs {names}; have {sorted(api.jobs())}")


def finish(api: Api, runner: StatusJobRunner, *names: str) -> None:
    jobs = jobs_named(api, *names)
    wait_for(lambda: set(names) <= set(runner.running()), WAIT, message=f"{names} running")
    for name in names:
        write_outputs(jobs[name])
        runner.succeed(name)


def posted(api: Api, reason: str, type_: str | None = None, text: str = "") -> tuple[str, str, str]:
    """An Event the operator posted: (type, reason, message). kopf posts Events from a queue of its own,
    after the reconcile that asked for one has patched the status: a phase or condition can be seen before
    its Event exists, so wait for the Event rather than read the list once. kopf posts one object's Events
    in order: once this one is there, every Event asked for before it is too."""
    return wait_for(lambda: next((e for e in api.events() if e[1] == reason and type_ in (None, e[0]) and text in e[2]), None),
                    WAIT, message=lambda: f"Event {type_ or ''} {reason} {text!r}; have {api.events()}")  # fmt: skip


def reconciles(port: int) -> float:
    """How many reconciles the operator has done (its /metrics on `port`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("kwarp_operator_reconcile_duration_seconds_count"))  # fmt: skip


def phase_is(api: Api, phase: str, name: str = "demo") -> dict[str, Any]:
    return wait_value(lambda: api.status(name), lambda st: st.get("phase") == phase, WAIT,
                      message=lambda: f"phase {phase}; status {json.dumps(api.status(name))[:1500]}")


def s3_secret(name: str = "kwarp-s3") -> dict[str, Any]:
    """The Secret holding the test S3 server's credentials, as a run's storage.secretName names it."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(ACCESS_KEY.encode()).decode(),
                     "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_KEY.encode()).decode()}}  # fmt: skip
