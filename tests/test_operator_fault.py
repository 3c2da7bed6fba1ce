"""Issue 14, "Must show": a member's pod killed (SIGKILL) during its state upload; the next pod resumes
from the previous state, and nothing is lost.

    API server  tests/kube.py's emulator; operator: kwarp.operator (kopf) in-process
    kubelet     ProcessJobRunner: each Job's container command as a real local process
    store       the S3 test server, reached by the tasks through FaultyProxy, which holds a request
                mid-flight: the trainer's second state upload is stopped there and its process killed

Then the retry pod (the Job's next attempt) must find the first state whole: same step, same tensors,
its manifest verifying; it resumes at that step, and the member ends with every step logged once.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from kwarp.store import layout
from kwarp.store.fencing import claim_task
from kwarp.store.s3 import S3Store
from kwarp.trainer.state import STATE_JSON

from .kube import ProcessJobRunner, RunningOperator, wait_for, wait_value
from .operator_harness import NS
from .s3server import FaultyProxy, S3Server
from .test_operator_e2e import e2e_cluster, uploaded

RUN, STEPS = "fault", 4


def state_snapshot(store: S3Store, key: str) -> tuple[int, dict[str, Any]]:
    """(step, tensors) of the state checkpoint at `key`, verified against its manifest on the way."""
    store.verify_checkpoint(key)
    folder = store.open_checkpoint(key)
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    return json.loads((folder / STATE_JSON).read_text())["step"], tensors


@pytest.fixture
def s3() -> Any:
    with S3Server() as server:
        yield server


def test_a_member_killed_during_its_state_upload_resumes_from_the_previous_state(tmp_path: Path, s3: S3Server) -> None:
    inputs = uploaded(s3, tmp_path)
    bucket = inputs.bucket

    with FaultyProxy(s3.port) as proxy, e2e_cluster(tmp_path, image="kwarp-worker:fault") as (cluster, api, opts):
        # The tasks reach the store through the proxy; the state uploads of member 0 are watched there.
        versions: list[bytes] = []

        def nth_version(n: int):  # noqa: ANN202 - a `when` predicate of FaultyProxy.hold
            def when(matched: bytes) -> bool:
                version = re.search(rb"/state/\.v/([^/ ]+)/", matched).group(1)  # type: ignore[union-attr]
                if version not in versions:
                    versions.append(version)
                return versions.index(version) == n

            return when

        state_put = rb"PUT /" + bucket.encode() + rb"/runs/[^ ]*/member-0/state/\.v/[^/ ]+/"
        killed_upload = proxy.hold(state_put, nth_version(1))  # the first pod's second state
        retry_upload = proxy.hold(state_put, nth_version(2))  # the retry's first state

        doc = inputs.document(RUN, proxy.endpoint, warp={"iterations": 1, "policies": 1, "steps": STEPS},
                              evaluation={"etas": [0.0, 1.0], "prompts": 4, "batchSize": 4},
                              failurePolicy={"maxRetries": 1})  # fmt: skip
        with ProcessJobRunner(cluster, tmp_path / "pods", parallel=1) as runner, RunningOperator(cluster, opts):
            uid = api.create(doc)["metadata"]["uid"]
            store = inputs.store(s3)  # the test's own view, direct
            state_key = layout.member_state(f"{NS}/{RUN}/{uid}", 0, 0)

            def logs() -> str:
                return {n: runner.log_tail(n, 200) for n in runner.logs}.__repr__()

            # 1. The first pod saved state at step 1 and is uploading step 2's: kill it there.
            assert killed_upload.reached.wait(240), f"no second state upload; logs: {logs()}"
            step_before, tensors_before = state_snapshot(store, state_key)
            assert step_before == 1
            pod = runner.procs[f"{RUN}-i0-m0"]
            os.killpg(pod.pid, signal.SIGKILL)
            killed_upload.release(forward=False)  # the dead client's request never reaches the server

            # 2. The retry pod loaded the state and is uploading its own first one: the state it
            #    found is the previous one, whole: same step, same tensors, manifest verified.
            assert retry_upload.reached.wait(240), f"the retry never saved; logs: {logs()}"
            step_after, tensors_after = state_snapshot(store, state_key)
            assert step_after == step_before
            assert tensors_after.keys() == tensors_before.keys() and len(tensors_after) > 0
            assert all(tensors_after[k].equal(tensors_before[k]) for k in tensors_before)
            retry_log = runner.log_tail(f"{RUN}-i0-m0-r1", 400)
            assert f"resuming {RUN} i0 m0 at step {step_before}/{STEPS}" in retry_log
            retry_upload.release()

            # 3. The member finishes on the retry; every step is logged exactly once.
            final = layout.member_final(f"{NS}/{RUN}/{uid}", 0, 0)
            wait_for(lambda: store.has_checkpoint(final), 240, message=lambda: f"member final; logs: {logs()}")
            first = runner.log_tail(f"{RUN}-i0-m0", 400)
            assert "resuming" not in first and '"step": 2,' in first  # the killed pod had trained step 2
            wait_value(lambda: api.jobs(RUN).get(f"{RUN}-i0-m0"), lambda j: j and (j.get("status") or {}).get("failed"),
                       30, message="the killed pod's Job failed")  # fmt: skip
        steps = [json.loads(line)["step"] for line in (store.get_bytes(layout.member_log(f"{NS}/{RUN}/{uid}", 0, 0)) or b"").splitlines()]
        assert steps == list(range(1, STEPS + 1))
        assert store.read_manifest(final).meta["steps"] == STEPS


def test_a_pod_fenced_out_by_a_newer_attempt_is_no_failure_and_its_job_goes_on(tmp_path: Path, s3: S3Server) -> None:
    """The prepare pod is partitioned from the store while it uploads the base policy (its request held in
    the proxy), and a newer attempt of the task claims the task's lease meanwhile. Let go, the pod stops
    fenced out (exit 75). The Job's podFailurePolicy ignores that exit: the Job is not failed and runs a new
    pod, the operator counts no failure (maxRetries 0 would fail the run) and the run goes on."""
    run = "fenced"
    inputs = uploaded(s3, tmp_path)

    with FaultyProxy(s3.port) as proxy, e2e_cluster(tmp_path, image="kwarp-worker:fault") as (cluster, api, opts):
        held = proxy.hold(rb"PUT /" + inputs.bucket.encode() + rb"/runs/[^ ]*/base/\.v/[^/ ]+/")
        doc = inputs.document(run, proxy.endpoint, warp={"iterations": 1, "policies": 1, "steps": 1},
                              training={"batchSize": 4, "samplesPerPrompt": 2, "maxPromptTokens": 16, "maxNewTokens": 6},
                              evaluation=None)  # fmt: skip
        with ProcessJobRunner(cluster, tmp_path / "pods", parallel=1) as runner, RunningOperator(cluster, opts):
            uid = api.create(doc)["metadata"]["uid"]
            store = inputs.store(s3)  # the test's own view, direct
            folder = f"{NS}/{run}/{uid}"

            def logs() -> str:
                return {n: runner.log_tail(n, 200) for n in runner.logs}.__repr__()

            assert held.reached.wait(240), f"the prepare pod never uploaded the base policy; logs: {logs()}"
            newer = claim_task(store, folder, "prepare", "pod newer")  # e.g. a replacement pod on another node
            held.release()

            wait_for(lambda: store.has_checkpoint(layout.base(folder)), 240, message=lambda: f"base; logs: {logs()}")
            wait_value(lambda: api.jobs(run).get(f"{run}-i0-m0"), lambda j: j is not None, 120,
                       message=lambda: f"the run went on to its member; status {api.status(run)}; logs: {logs()}")  # fmt: skip
            prepare = api.jobs(run)[f"{run}-prepare"]
            status = api.status(run)
            log = runner.log_tail(f"{run}-prepare", 400)
        assert "kwarp prepare: fenced out:" in log and f"(epoch {newer.epoch}, holder pod newer" in log, log
        conditions = {c["type"]: c["status"] for c in (prepare.get("status") or {}).get("conditions") or []}
        assert conditions.get("Complete") == "True" and conditions.get("Failed") != "True", prepare.get("status")
        assert not status.get("failures") and status.get("phase") != "Failed", status
        assert f"{run}-prepare-r1" not in api.jobs(run)  # no retry Job: the one Job finished the task
