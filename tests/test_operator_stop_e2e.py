"""End to end: a trainer stopped mid-run by the operator's watchdog saves its state, and the retry resumes it.

The parts are real: the operator (kopf in-process) against the API server emulator, `kwarp` task processes
started from the Jobs by ProcessJobRunner, a moto S3 server holding inputs and checkpoints. The test does
to the running trainer Job what the progress watchdog does to a stalled one (operator/watchdog.py
`fail_patch`: the reason annotation and a deadline already passed); the Job controller (the runner) then
stops the pod with SIGTERM, exactly as for a deadline. The trainer saves its state at the step it reached
(between two checkpoint intervals), the Job fails with the watchdog's reason, and the retry continues from
that step to the end: the member's log holds every step once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from kwarp.operator.watchdog import fail_patch
from kwarp.store import layout
from kwarp.trainer.train import PROGRESS_PREFIX

from .kube import ProcessJobRunner, RunningOperator, wait_for, wait_value
from .operator_harness import NS
from .processes import freeze, pending, send
from .s3server import S3Server
from .test_operator_e2e import e2e_cluster, s3, uploaded  # noqa: F401 - s3 is the fixture

RUN = "e2e"
STEPS = 40
pytestmark = pytest.mark.timeout(1500)  # four task processes on a loaded 2-core machine


def last_step(log: str) -> int:
    """The last step a pod's log reports. The log is read while the pod writes it: its last line can be
    half there (a write crossing a page of the file), and is then read at the next poll."""
    lines = [ln[len(PROGRESS_PREFIX):] for ln in log.splitlines() if ln.startswith(PROGRESS_PREFIX)]
    steps = []
    for i, line in enumerate(lines):
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # only the line being written may be cut
                raise
    return max(steps, default=0)


def test_last_step_reads_past_a_line_being_written() -> None:
    written = f'{PROGRESS_PREFIX}{{"step": 2, "reward": 0.1}}\n{PROGRESS_PREFIX}{{"step": 3, "rew'
    assert last_step(written) == 2
    with pytest.raises(json.JSONDecodeError):  # a cut line before the last is no write in progress
        last_step(f'{PROGRESS_PREFIX}{{"st\n{PROGRESS_PREFIX}{{"step": 3}}')


def test_a_stopped_trainer_saves_its_step_and_the_retry_resumes_it(tmp_path: Path, s3: S3Server) -> None:  # noqa: F811
    inputs = uploaded(s3, tmp_path)
    doc = inputs.document()
    doc["spec"]["warp"].update(iterations=1, policies=1, steps=STEPS)
    doc["spec"]["training"]["checkpointInterval"] = 1000  # only the SIGTERM saves
    doc["spec"]["failurePolicy"] = {"maxRetries": 1}

    with e2e_cluster(tmp_path) as (cluster, api, opts), \
            ProcessJobRunner(cluster, tmp_path / "pods", parallel=1) as runner, RunningOperator(cluster, opts):
        folder = f"{NS}/{RUN}/{api.create(doc)['metadata']['uid']}"  # the run's own folder in the bucket
        job = "e2e-i0-m0"
        wait_for(lambda: last_step(runner.log_tail(job, 400)) >= 3, 500,
                 message=lambda: f"{job} at step 3; log: {runner.log_tail(job)}")
        # The pod is frozen (SIGSTOP) from here until the Job controller's SIGTERM has reached it: the
        # patch, the watch and the controller's reaction take longer than a fast machine's trainer
        # needs for its last steps, and then nothing would be left to stop.
        pod = freeze(runner.procs[job].pid)
        frozen_at = last_step(runner.log_tail(job, 400))
        assert frozen_at < STEPS - 1, f"{job} was at its last step when frozen: nothing left to stop"
        reason = "NoProgress: stopped by the test as the watchdog stops a stalled trainer"
        api.batch.patch_namespaced_job(job, NS, fail_patch(reason))
        wait_for(lambda: pending(pod[0], signal.SIGTERM), 60, message=f"the Job controller's SIGTERM to {job}")
        send(pod, signal.SIGCONT)  # it has 10 s from its SIGTERM to save and exit (tests/kube_pods.py)

        def status() -> dict[str, Any]:
            st = api.status(RUN)
            if st.get("phase") == "Failed":
                raise AssertionError(f"the run failed: {json.dumps(st.get('conditions'))}\n"
                                     f"logs: {[runner.log_tail(n) for n in runner.logs]}")  # fmt: skip
            return st

        st = wait_value(status, lambda s: s.get("phase") == "Succeeded", 800,
                        message=lambda: f"Succeeded; status {json.dumps(api.status(RUN))[:2000]}")
        assert not runner.errors, runner.errors
        first, retry = runner.log_tail(job, 2000), runner.log_tail(f"{job}-r1", 2000)

    # The first attempt saved at the step it reached when SIGTERM came, between checkpoint intervals ...
    saved = next(int(ln.split(" saved at step ")[1].split("/")[0]) for ln in first.splitlines()
                 if "SIGTERM:" in ln and " saved at step " in ln)  # fmt: skip
    assert frozen_at <= saved <= frozen_at + 1  # the step it was in when frozen, or the one after
    assert last_step(first) == saved  # it stopped at that step boundary
    # ... the Job failed with the watchdog's reason, and the retry went on from there to the end.
    assert reason in st["failures"]["i0-m0"]["reason"]
    assert f"resuming {RUN} i0 m0 at step {saved}/{STEPS}" in retry
    progress = [json.loads(ln[len(PROGRESS_PREFIX):])["step"] for ln in retry.splitlines() if ln.startswith(PROGRESS_PREFIX)]
    assert progress == list(range(saved + 1, STEPS + 1))
    store = inputs.store(s3)
    log = store.get_bytes(layout.member_log(folder, 0, 0)).decode().splitlines()  # type: ignore[union-attr]
    assert [json.loads(ln)["step"] for ln in log if ln.strip()] == list(range(1, STEPS + 1))  # every step once
    assert store.has_checkpoint(layout.member_final(folder, 0, 0))
