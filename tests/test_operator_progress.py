"""Progress and ETA in a WarpRun's status, from its members' metrics in the store (as Kubeflow Trainer's TrainJob)."""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path
from typing import Any

from kwarp.store import layout

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_value
from .operator_harness import NS, WAIT, Api, finish, jobs_named, options, warprun
from .prom import free_port, sample, scrape


def log(path: Path, steps: list[tuple[int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "reward": 0.1 * s, "kl_anchor": 0.01 * s, "time": t}) + "\n"
                            for s, t in steps))  # fmt: skip


def unix(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def test_status_shows_each_members_steps_and_the_runs_progress_and_eta(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    # progress_seconds=0: the store is read at every reconcile
    with RunningOperator(cluster, options(progress_seconds=0, metrics_port=port, bind_address="127.0.0.1")):
        api.create(warprun(store, warp={"iterations": 2, "policies": 2, "steps": 10}))
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        # What the trainers uploaded so far: m0 4 steps, m1 2 steps, both at 1 step/s.
        folder = api.folder()  # the run's own folder: default/demo/<uid>
        log(store / layout.member_log(folder, 0, 0), [(1, 100.0), (2, 101.0), (3, 102.0), (4, 103.0)])
        log(store / layout.member_log(folder, 0, 1), [(1, 200.0), (2, 201.0)])
        api.patch_spec({"failurePolicy": {"maxRetries": 2}})  # a reconcile

        def read(status: dict[str, Any]) -> bool:
            return (status.get("progress") or {}).get("stepsDone") == 6

        status = wait_value(api.status, read, WAIT, message=lambda: f"progress read: {api.status().get('progress')}")
        members = {m["member"]: m for m in status["members"]}
        assert (members[0]["step"], members[0]["steps"], members[1]["step"], members[1]["steps"]) == (4, 10, 2, 10)
        assert members[0]["lastReward"] == 0.4 and members[0]["lastKl"] == 0.04 and members[1]["lastReward"] == 0.2
        progress = status["progress"]
        assert progress["summary"] == "6/40 (15%)" and progress["percent"] == 15.0 and progress["stepsPerSecond"] == 1.0
        # Left: m1's 8 steps (m0 runs beside it), then iteration 1's 10 steps, at 1 step/s.
        assert unix(progress["estimatedCompletionTime"]) - unix(progress["updatedAt"]) == 18
        # The same figures on the operator's /metrics: the ratio and the ETA as a unix time.
        run = {"namespace": NS, "run": "demo"}
        # (Each reconcile reads the store again here, and the ETA moves with the read's time: compare the
        # metrics with the status of the same moment.)
        def agree(both: tuple[dict[Any, float], dict[str, Any]]) -> bool:
            samples, now = both
            eta = (now.get("progress") or {}).get("estimatedCompletionTime")
            return (sample(samples, "kwarp_run_progress_ratio", **run) == 0.15 and eta is not None
                    and sample(samples, "kwarp_run_estimated_completion_timestamp_seconds", **run) == unix(eta))

        wait_value(lambda: (scrape(url), api.status()), agree, WAIT,
                   message=lambda: f"progress in /metrics: {scrape(url)}; status {api.status().get('progress')}")

        finish(api, runner, "demo-i0-m0", "demo-i0-m1")
        done = wait_value(api.status, lambda st: (st.get("progress") or {}).get("stepsDone") == 20, WAIT,
                          message=lambda: f"members done: {api.status().get('progress')}")  # fmt: skip
        assert {(m["iteration"], m["member"], m["step"]) for m in done["members"] if m["iteration"] == 0} == {
            (0, 0, 10), (0, 1, 10)}

        # A deleted run's series go: per-run labels stay bounded by the runs that exist.
        api.delete()
        wait_value(lambda: scrape(url), lambda s: not any(dict(k[1]).get("run") == "demo" for k in s), WAIT,
                   message=lambda: f"the run's series removed: {scrape(url)}")  # fmt: skip
