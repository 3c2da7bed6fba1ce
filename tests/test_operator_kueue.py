"""The operator with Kueue: Jobs queued in a LocalQueue, admitted by Kueue (tests/kueue.py stands in for it).

The operator labels each Job with the run's queue and creates it suspended; only Kueue unsuspends it.
The run's status says what waits for admission (the Pending condition names the queue), and
`suspend: true` still stops everything: Kueue would start again a suspended Job whose workload it
admitted, so the operator withdraws (deletes) the run's unfinished Jobs and creates them again on resume.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kwarp.operator import conditions as C
from kwarp.operator.jobs import WorkerSettings
from kwarp.operator.watchdog import parse_time
from kwarp.run import report
from kwarp.store import FileStore, layout

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for, wait_value
from .kueue import QUEUE_LABEL, KueueStandIn
from .operator_harness import IMAGE, NS, Api, finish, jobs_named, options, phase_is, warprun
from .prom import free_port, sample, scrape


def pending(api: Api) -> dict[str, Any] | None:
    return api.condition(C.PENDING)


def reconciled(api: Api, generation: int) -> None:
    """Wait until the operator has reconciled the run at `generation` (it wrote observedGeneration)."""
    wait_for(lambda: (api.status().get("observedGeneration") or 0) >= generation, 20,
             message=f"a reconcile at generation {generation}")  # fmt: skip


def kueue(cluster: Cluster, **quota: int) -> KueueStandIn:
    return KueueStandIn(cluster, "team-a", {"pods": quota.get("pods", 0), "nvidia.com/gpu": quota.get("gpus", 0)},
                        flavor_labels={"cloud.example/gpu": "h100"})  # fmt: skip


def test_queued_jobs_wait_for_kueue_and_the_operator_never_unsuspends_them(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    with kueue(cluster) as queue, RunningOperator(cluster, options()):  # no quota yet: nothing is admitted
        api.create(warprun(store, queueName="team-a"))
        job = jobs_named(api, "demo-prepare")["demo-prepare"]
        assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a" and job["spec"]["suspend"] is True
        cond = wait_value(lambda: pending(api), lambda c: c and c["status"] == "True", 20, message="Pending condition")
        assert cond["reason"] == C.WAITING_FOR_ADMISSION and "'team-a'" in cond["message"]
        assert "demo-prepare" in cond["message"]

        # More reconciles (a safe spec change bumps the generation): the Job stays queued.
        api.patch_spec({"failurePolicy": {"maxRetries": 2}})
        reconciled(api, 2)
        assert api.jobs()["demo-prepare"]["spec"]["suspend"] is True and not runner.running()
        assert api.status()["phase"] == "Pending"

        queue.set_quota(pods=4, gpus=2)  # Kueue admits: unsuspends and injects the flavor's node labels
        wait_for(lambda: "demo-prepare" in runner.running(), 10, message="prepare admitted and running")
        admitted = api.jobs()["demo-prepare"]
        assert admitted["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.example/gpu": "h100"}
        wait_value(lambda: pending(api), lambda c: c["status"] == "False" and c["reason"] == C.ADMITTED, 20,
                   message="Pending cleared once admitted")  # fmt: skip

        finish(api, runner, "demo-prepare")
        members = jobs_named(api, "demo-i0-m0", "demo-i0-m1")  # (admitted at once: there is quota)
        assert all(j["metadata"]["labels"][QUEUE_LABEL] == "team-a" for j in members.values())
        finish(api, runner, "demo-i0-m0", "demo-i0-m1")
        jobs_named(api, "demo-i0-merge")
        assert queue.admissions[:3] == ["demo-prepare", "demo-i0-m0", "demo-i0-m1"]
    assert not queue.errors, queue.errors


def test_the_operator_default_queue_applies_when_the_run_names_none(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    opts = options(worker=WorkerSettings(image=IMAGE, queue_name="team-a"))
    with kueue(cluster, pods=1, gpus=2) as queue, RunningOperator(cluster, opts):
        api.create(warprun(store))
        finish(api, runner, "demo-prepare")
        members = jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        assert {j["metadata"]["labels"][QUEUE_LABEL] for j in members.values()} == {"team-a"}  # prepare too
        # Quota for one pod: one member runs, the other waits, and the status says which and where.
        wait_for(lambda: len(runner.running()) == 1, 10, message="one member admitted")
        waiting = next(n for n in ("demo-i0-m0", "demo-i0-m1") if n not in runner.running())
        admitted = next(n for n in ("demo-i0-m0", "demo-i0-m1") if n != waiting)

        def shown(status: dict[str, Any]) -> bool:
            cond = next((c for c in status.get("conditions", []) if c["type"] == C.PENDING), {})
            states = {m["job"]: m["state"] for m in status.get("members", [])}
            return (cond.get("status") == "True" and waiting in cond["message"] and admitted not in cond["message"]
                    and states == {admitted: "Running", waiting: "Queued"})  # fmt: skip

        status = wait_value(api.status, shown, 20, message=lambda: f"{waiting} shown waiting: {api.status()}")
        assert "'team-a'" in next(c for c in status["conditions"] if c["type"] == C.PENDING)["message"]
    assert not queue.errors, queue.errors


def test_suspend_withdraws_queued_and_admitted_jobs_and_resume_queues_them_again(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    with kueue(cluster, pods=2, gpus=1) as queue, RunningOperator(cluster, options()):
        api.create(warprun(store, queueName="team-a"))
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        # One GPU: m0 is admitted and runs, m1 waits in the queue.
        wait_for(lambda: runner.running() == ["demo-i0-m0"], 10, message="m0 admitted, m1 queued")

        api.patch_spec({"suspend": True})
        # Both withdrawn: Kueue would restart the admitted one if it were only suspended.
        wait_for(lambda: not any("-i0-m" in n for n in api.jobs()), 20, message="member Jobs withdrawn")
        phase_is(api, "Suspended")
        assert api.condition(C.SUSPENDED)["status"] == "True"  # type: ignore[index]
        assert "withdrawn from Kueue" in api.condition(C.SUSPENDED)["message"]  # type: ignore[index]
        wait_for(lambda: pending(api)["status"] == "False", 10, message="nothing pending while suspended")  # type: ignore[index]
        assert not runner.running()
        wait_for(lambda: queue.used()["pods"] == 0, 10, message="the quota is free for others")

        api.patch_spec({"suspend": False})
        members = jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        assert members["demo-i0-m1"]["spec"]["suspend"] is True  # queued again (m0 holds the one GPU)
        assert all(members[n]["metadata"]["labels"][QUEUE_LABEL] == "team-a" for n in ("demo-i0-m0", "demo-i0-m1"))
        wait_for(lambda: runner.running() == ["demo-i0-m0"], 10, message="m0 admitted again")
        finish(api, runner, "demo-i0-m0")
        finish(api, runner, "demo-i0-m1")  # admitted once m0's GPU came back
        jobs_named(api, "demo-i0-merge")
        assert queue.admissions.count("demo-i0-m0") == 2 and queue.admissions.count("demo-i0-m1") == 1
    assert not queue.errors, queue.errors


def test_admission_wait_and_waiting_jobs_reach_the_operators_metrics_and_go_with_the_run(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    opts = options(metrics_port=port, bind_address="127.0.0.1", progress_seconds=0)
    queue_of = {"namespace": NS, "queue": "team-a"}
    with kueue(cluster) as queue, RunningOperator(cluster, opts):  # no quota yet: prepare waits
        api.create(warprun(store, queueName="team-a"))
        jobs_named(api, "demo-prepare")
        wait_value(lambda: scrape(url), lambda s: sample(s, "kwarp_operator_admission_waiting_jobs", **queue_of) == 1,
                   20, message="prepare counted waiting")  # fmt: skip
        assert not sample(scrape(url), "kwarp_operator_admission_wait_seconds_count", **queue_of)
        time.sleep(1.1)  # the API's timestamps have whole seconds: let prepare's wait be one or more

        queue.set_quota(pods=1, gpus=2)  # one pod at a time: prepare, then one member while the other waits
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        wait_for(lambda: len(runner.running()) == 1, 10, message="one member admitted")

        def seen(s: dict[Any, float]) -> bool:
            return (sample(s, "kwarp_operator_admission_wait_seconds_count", **queue_of) == 2
                    and sample(s, "kwarp_operator_admission_waiting_jobs", **queue_of) == 1)  # fmt: skip

        samples = wait_value(lambda: scrape(url), seen, 20, message=lambda: f"two admissions: {scrape(url)}")
        # The waits are the API server's own: startTime (set when Kueue unsuspended the Job) - creationTimestamp.
        started = [j for j in api.jobs().values() if (j.get("status") or {}).get("startTime")]
        assert len(started) == 2
        waits = [parse_time(j["status"]["startTime"]) - parse_time(j["metadata"]["creationTimestamp"]) for j in started]
        assert sample(samples, "kwarp_operator_admission_wait_seconds_sum", **queue_of) == sum(waits) and max(waits) >= 1
        assert sample(samples, "kwarp_operator_admission_wait_seconds_bucket", **queue_of, le="+Inf") == 2
        assert sample(samples, "kwarp_run_progress_ratio", namespace=NS, run="demo") == 0.0

        # The same waits in the run's folder (jobs.json), where `kwarp report` reads them after the Jobs are gone.
        folder = api.folder()
        recorded = wait_value(lambda: (FileStore(store).get_json(layout.jobs_json(folder)) or {}).get("tasks", []),
                              lambda tasks: len(tasks) == 2, 20, message="two started Jobs in jobs.json")  # fmt: skip
        assert sorted(e["admission_wait_seconds"] for e in recorded) == sorted(waits)
        assert {e["queue"] for e in recorded} == {"team-a"}
        summary = json.loads((report.write_report(FileStore(store), folder, out_dir=store.parent / "report").parent
                              / "summary.json").read_text())  # fmt: skip
        assert summary["timeline"]["executor"] == "operator"
        assert summary["timeline"]["admission"]["jobs"] == 2 and summary["timeline"]["admission"]["max_seconds"] == max(waits)

        api.delete()  # the run goes with a Job still waiting: its share of the gauge and its series go too
        gone = wait_value(lambda: scrape(url),
                          lambda s: sample(s, "kwarp_operator_admission_waiting_jobs", **queue_of) == 0
                          and not any(dict(k[1]).get("run") == "demo" for k in s), 20,
                          message=lambda: f"the run's series removed: {scrape(url)}")  # fmt: skip
        assert sample(gone, "kwarp_operator_admission_wait_seconds_count", **queue_of) == 2  # history stays
    assert not queue.errors, queue.errors
