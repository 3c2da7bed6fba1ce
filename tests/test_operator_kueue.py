"""The operator with Kueue: Jobs queued in a LocalQueue, admitted by Kueue (tests/kueue.py stands in for it).

The operator labels each Job with the run's queue and creates it suspended; only Kueue unsuspends it.
An iteration's members are one Indexed Job (<run>-i<k>-members, pod index = member), so Kueue admits
them together: one Workload for all their GPUs, or none. The run's status says what waits for admission
(the Pending condition names the queue), and `suspend: true` still stops everything: Kueue would start
again a suspended Job whose workload it admitted, so the operator withdraws (deletes) the run's
unfinished Jobs and creates them again on resume.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from kwarp.operator import conditions as C
from kwarp.operator.jobs import LABEL_TASK, WorkerSettings
from kwarp.operator.watchdog import parse_time
from kwarp.run import report
from kwarp.store import FileStore, layout

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for, wait_value
from .kueue import GPU, QUEUE_LABEL, KueueStandIn
from .operator_harness import (
    IMAGE,
    NS,
    WAIT,
    Api,
    finish,
    jobs_named,
    options,
    phase_is,
    warprun,
    write_outputs,
)
from .prom import free_port, sample, scrape


def pending(api: Api) -> dict[str, Any] | None:
    return api.condition(C.PENDING)


def reconciled(api: Api, generation: int) -> None:
    """Wait until the operator has reconciled the run at `generation` (it wrote observedGeneration)."""
    wait_for(lambda: (api.status().get("observedGeneration") or 0) >= generation, WAIT,
             message=f"a reconcile at generation {generation}")  # fmt: skip


def finish_member(api: Api, runner: StatusJobRunner, gang: str, member: int, run: str = "demo") -> None:
    """Member `member` of a gang Job publishes its outputs and its pod exits 0."""
    job = api.jobs(run)[gang]
    labels = job["metadata"]["labels"]
    task = labels[LABEL_TASK].replace("members", f"m{member}")  # what that member's own Job would say
    write_outputs({**job, "metadata": {**job["metadata"], "labels": {**labels, LABEL_TASK: task}}})
    runner.succeed_index(gang, member)


def finish_gang(api: Api, runner: StatusJobRunner, gang: str, run: str = "demo", members: int = 2) -> None:
    wait_for(lambda: gang in runner.running(), WAIT, message=f"{gang} admitted and running")
    for m in range(members):
        finish_member(api, runner, gang, m, run)


def member_states(status: dict[str, Any]) -> dict[int, tuple[str | None, str]]:
    """Each listed member's Job and state. A member is listed from the pass that reaches its iteration (while
    the run prepares, for iteration 0) and has no `job` until the pass that creates its (gang) Job: a poll
    between that creation and the pass's status patch reads it without one."""
    return {m["member"]: (m.get("job"), m["state"]) for m in status.get("members", [])}


def index_pods(api: Api, gang: str) -> dict[int, list[str]]:
    """The pods the Job controller made for each index of a gang Job, oldest first."""
    items = api.cluster.raw("GET", f"/api/v1/namespaces/{NS}/pods", query=[("labelSelector", f"job-name={gang}")])["items"]
    out: dict[int, list[str]] = {}
    for pod in sorted(items, key=lambda p: p["metadata"]["creationTimestamp"]):
        out.setdefault(int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]), []).append(
            pod["metadata"]["name"])
    return out


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
        cond = wait_value(lambda: pending(api), lambda c: c and c["status"] == "True", WAIT, message="Pending condition")
        assert cond["reason"] == C.WAITING_FOR_ADMISSION and "'team-a'" in cond["message"]
        assert "demo-prepare" in cond["message"]

        # More reconciles (a safe spec change bumps the generation): the Job stays queued.
        api.patch_spec({"failurePolicy": {"maxRetries": 2}})
        reconciled(api, 2)
        assert api.jobs()["demo-prepare"]["spec"]["suspend"] is True and not runner.running()
        assert api.status()["phase"] == "Pending"

        queue.set_quota(pods=4, gpus=2)  # Kueue admits: unsuspends and injects the flavor's node labels
        wait_for(lambda: "demo-prepare" in runner.running(), WAIT, message="prepare admitted and running")
        admitted = api.jobs()["demo-prepare"]
        assert admitted["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.example/gpu": "h100"}
        wait_value(lambda: pending(api), lambda c: c["status"] == "False" and c["reason"] == C.ADMITTED, WAIT,
                   message="Pending cleared once admitted")  # fmt: skip

        finish(api, runner, "demo-prepare")
        gang = jobs_named(api, "demo-i0-members")["demo-i0-members"]  # both members, one Job, one Workload
        assert gang["metadata"]["labels"][QUEUE_LABEL] == "team-a" and gang["spec"]["parallelism"] == 2
        assert not any(n.startswith("demo-i0-m") and n != "demo-i0-members" for n in api.jobs())
        finish_gang(api, runner, "demo-i0-members")
        jobs_named(api, "demo-i0-merge")
        assert queue.admissions[:2] == ["demo-prepare", "demo-i0-members"]
    assert not queue.errors, queue.errors


def test_the_operator_default_queue_applies_when_the_run_names_none(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    opts = options(worker=WorkerSettings(image=IMAGE, queue_name="team-a"))
    with kueue(cluster, pods=1, gpus=2) as queue, RunningOperator(cluster, opts):
        api.create(warprun(store))
        finish(api, runner, "demo-prepare")
        gang = jobs_named(api, "demo-i0-members")["demo-i0-members"]
        assert gang["metadata"]["labels"][QUEUE_LABEL] == "team-a"  # prepare's too
        # Quota for one pod: the gang of two waits whole; no member runs, and the status says so.

        def shown(status: dict[str, Any]) -> bool:
            cond = next((c for c in status.get("conditions", []) if c["type"] == C.PENDING), {})
            return (cond.get("status") == "True" and "1 Job(s)" in cond["message"] and "demo-i0-members" in cond["message"]
                    and member_states(status) == {0: ("demo-i0-members", "Queued"), 1: ("demo-i0-members", "Queued")})  # fmt: skip

        status = wait_value(api.status, shown, WAIT, message=lambda: f"the gang shown waiting: {api.status()}")
        assert "'team-a'" in next(c for c in status["conditions"] if c["type"] == C.PENDING)["message"]
        assert not runner.running()
        # (prepare's quota comes back at the stand-in's next pass after it finished)
        wait_for(lambda: queue.used() == {"pods": 0, GPU: 0}, WAIT, message=lambda: f"no quota held: {queue.used()}")

        queue.set_quota(pods=2)  # room for both: admitted together
        wait_value(api.status, lambda st: member_states(st) == {0: ("demo-i0-members", "Running"),
                                                                1: ("demo-i0-members", "Running")}, WAIT,
                   message=lambda: f"both members running: {api.status()}")  # fmt: skip
        assert index_pods(api, "demo-i0-members").keys() == {0, 1}
    assert not queue.errors, queue.errors


def test_suspend_withdraws_a_queued_and_an_admitted_gang_and_resume_queues_it_again(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    with kueue(cluster, pods=4, gpus=1) as queue, RunningOperator(cluster, options()):
        api.create(warprun(store, queueName="team-a"))
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-members")
        # One GPU for a gang of two: it waits whole.
        wait_for(lambda: (pending(api) or {}).get("status") == "True" and "demo-i0-members" in pending(api)["message"],  # type: ignore[index]
                 20, message="the gang waits for admission")  # fmt: skip

        api.patch_spec({"suspend": True})  # suspend while queued: withdrawn
        wait_for(lambda: "demo-i0-members" not in api.jobs(), WAIT, message="queued gang withdrawn")
        phase_is(api, "Suspended")
        assert "withdrawn from Kueue" in api.condition(C.SUSPENDED)["message"]  # type: ignore[index]
        wait_for(lambda: pending(api)["status"] == "False", WAIT, message="nothing pending while suspended")  # type: ignore[index]

        queue.set_quota(gpus=2)
        api.patch_spec({"suspend": False})  # the same Job again, queued, admitted whole
        assert jobs_named(api, "demo-i0-members")["demo-i0-members"]["metadata"]["labels"][QUEUE_LABEL] == "team-a"
        wait_for(lambda: runner.running() == ["demo-i0-members"], WAIT, message="the gang admitted")
        finish_member(api, runner, "demo-i0-members", 0)  # member 0 publishes its checkpoint

        api.patch_spec({"suspend": True})  # suspend after admission: withdrawn too (Kueue would restart it)
        wait_for(lambda: "demo-i0-members" not in api.jobs(), WAIT, message="admitted gang withdrawn")
        phase_is(api, "Suspended")
        assert not runner.running()
        wait_for(lambda: queue.used()["pods"] == 0, WAIT, message="the quota is free for others")

        api.patch_spec({"suspend": False})
        finish_gang(api, runner, "demo-i0-members")  # (member 0 would find its checkpoint and return at once)
        jobs_named(api, "demo-i0-merge")
        assert queue.admissions.count("demo-i0-members") == 2
        assert not any(n.startswith("demo-i0-members-r") for n in api.jobs())  # a withdrawal is not a failure
    assert not queue.errors, queue.errors


def test_two_queued_runs_against_three_gpus_one_is_admitted_whole_the_other_waits_holding_nothing(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """Per-member Jobs would admit a's two members and one of b's: b's other half would wait, holding a GPU."""
    with kueue(cluster, pods=10, gpus=3) as queue, RunningOperator(cluster, options()):
        for run in ("a", "b"):
            api.create(warprun(store, name=run, queueName="team-a"))
        for run in ("a", "b"):
            jobs_named_in(api, run, f"{run}-prepare")
            wait_for(lambda: f"{run}-prepare" in runner.running(), WAIT, message=f"{run}-prepare running")  # noqa: B023
            prepare = api.jobs(run)[f"{run}-prepare"]
            write_outputs(prepare)
            runner.succeed(f"{run}-prepare")
        for run in ("a", "b"):
            jobs_named_in(api, run, f"{run}-i0-members")
        first = wait_value(lambda: [n for n in runner.running() if n.endswith("-i0-members")], lambda r: len(r) == 1, WAIT,
                           message="one gang admitted")[0]  # fmt: skip
        other = "b" if first.startswith("a") else "a"
        second = f"{other}-i0-members"
        # The other waits whole: not admitted, no pod, no GPU: 2 of the 3 are in use.
        wait_value(lambda: api.status(other), lambda st: member_states(st) == {0: (second, "Queued"), 1: (second, "Queued")},
                   20, message=lambda: f"{other} waiting: {api.status(other)}")  # fmt: skip
        assert queue.used()[GPU] == 2 and second not in queue.admissions
        assert index_pods(api, second) == {} and len(index_pods(api, first)) == 2

        finish_gang(api, runner, first, run=first[0])  # the first run's members finish: their GPUs come back
        wait_for(lambda: second in runner.running(), WAIT, message=f"{second} admitted once the first finished")
        assert queue.admissions.index(second) > queue.admissions.index(first)
        wait_value(lambda: api.status(other), lambda st: member_states(st) == {0: (second, "Running"), 1: (second, "Running")},
                   20, message=lambda: f"{other} running: {api.status(other)}")  # fmt: skip
    assert not queue.errors, queue.errors


def test_a_killed_member_pod_is_retried_alone_and_a_member_past_max_retries_fails_the_run(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    with kueue(cluster, pods=4, gpus=2) as queue, RunningOperator(cluster, options()):
        api.create(warprun(store, queueName="team-a"))  # failurePolicy.maxRetries: 1
        finish(api, runner, "demo-prepare")
        gang = jobs_named(api, "demo-i0-members")["demo-i0-members"]
        assert gang["spec"]["backoffLimit"] == 2  # M x maxRetries
        wait_for(lambda: runner.running() == ["demo-i0-members"], WAIT, message="the gang admitted")
        finish_member(api, runner, "demo-i0-members", 0)
        first = index_pods(api, "demo-i0-members")[1]
        runner.fail_index("demo-i0-members", 1, exit_code=137, message="Killed")  # member 1's pod killed

        # Only index 1 gets a new pod; member 0 (done) is not run again; no second Job.
        pods = wait_value(lambda: index_pods(api, "demo-i0-members"), lambda p: len(p.get(1, [])) == 2, WAIT,
                          message="a new pod for index 1")  # fmt: skip
        assert len(pods[0]) == 1 and first[0] in pods[1]  # (same-second pods: no order by creation time)
        status = wait_value(api.status, lambda st: {m["member"]: (m["state"], m["attempts"]) for m in st.get("members", [])}
                            == {0: ("Succeeded", 1), 1: ("Running", 2)}, WAIT,
                            message=lambda: f"member 1 retried: {api.status()}")  # fmt: skip
        assert status["phase"] == "Training"
        assert [n for n in api.jobs() if "-i0-" in n] == ["demo-i0-members"]

        # A second failure of member 1 is past its maxRetries (1), though the gang's budget (2) is not
        # spent: the operator fails the run, naming the member and what its pod said.
        runner.fail_index("demo-i0-members", 1, exit_code=1, message="CUDA error: out of memory")
        status = phase_is(api, "Failed")
        failed = next(c for c in status["conditions"] if c["type"] == C.FAILED)
        assert "i0-m1 failed 2 times" in failed["message"] and "CUDA error: out of memory" in failed["message"]
        assert "(member 1)" in failed["message"]
    assert not queue.errors, queue.errors


def test_raising_max_retries_resumes_a_gang_member_and_a_spent_gang_gets_a_new_attempt(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """What docs/cluster.md promises: a run failed by a member past maxRetries continues when maxRetries is
    raised, and a gang Job whose budget is spent is followed by <run>-i<k>-members-r1, with every index."""
    with kueue(cluster, pods=4, gpus=2) as queue, RunningOperator(cluster, options()):
        api.create(warprun(store, queueName="team-a"))  # failurePolicy.maxRetries: 1 -> backoffLimit 2
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-members")
        wait_for(lambda: runner.running() == ["demo-i0-members"], WAIT, message="the gang admitted")
        finish_member(api, runner, "demo-i0-members", 0)
        for _ in range(2):
            runner.fail_index("demo-i0-members", 1, message="NCCL timeout")
        phase_is(api, "Failed")

        api.patch_spec({"failurePolicy": {"maxRetries": 2}})  # member 1's third pod is still running
        phase_is(api, "Training")
        runner.fail_index("demo-i0-members", 1, message="NCCL timeout")  # 3 > backoffLimit 2: the Job fails
        wait_for(lambda: any(c["type"] == "Failed" and c["status"] == "True"
                             for c in (api.jobs()["demo-i0-members"].get("status") or {}).get("conditions") or []),
                 10, message="the gang Job failed")  # fmt: skip
        phase_is(api, "Failed")  # 3 failures > maxRetries 2

        api.patch_spec({"failurePolicy": {"maxRetries": 3}})
        retry = jobs_named(api, "demo-i0-members-r1")["demo-i0-members-r1"]
        assert retry["spec"]["completions"] == 2 and retry["spec"]["backoffLimit"] == 6  # every index, M x 3
        wait_for(lambda: runner.running() == ["demo-i0-members-r1"], WAIT, message="the new gang admitted")
        runner.succeed_index("demo-i0-members-r1", 0)  # member 0's trainer finds its checkpoint and returns
        finish_member(api, runner, "demo-i0-members-r1", 1)
        jobs_named(api, "demo-i0-merge")
        # A pass creates the merge Job before it writes the status that shows both members done: wait for it.
        wait_value(api.status, lambda st: {m["member"]: m["state"] for m in st.get("members", [])}
                   == {0: "Succeeded", 1: "Succeeded"}, WAIT, message=lambda: f"both members Succeeded: {api.status()}")
        assert queue.admissions.count("demo-i0-members") == 1 and queue.admissions.count("demo-i0-members-r1") == 1
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

        queue.set_quota(pods=1, gpus=2)  # one pod at a time: prepare, then the gang of two waits
        finish(api, runner, "demo-prepare")
        jobs_named(api, "demo-i0-members")
        wait_for(lambda: (pending(api) or {}).get("message", "").startswith("1 Job(s)"), WAIT, message="the gang waits")

        def seen(s: dict[Any, float]) -> bool:  # the gang waits as one Job, not one per member
            return (sample(s, "kwarp_operator_admission_wait_seconds_count", **queue_of) == 1
                    and sample(s, "kwarp_operator_admission_waiting_jobs", **queue_of) == 1)  # fmt: skip

        samples = wait_value(lambda: scrape(url), seen, WAIT, message=lambda: f"one admission, one waiting: {scrape(url)}")
        # The waits are the API server's own: startTime (set when Kueue unsuspended the Job) - creationTimestamp.
        started = [j for j in api.jobs().values() if (j.get("status") or {}).get("startTime")]
        assert len(started) == 1
        waits = [parse_time(j["status"]["startTime"]) - parse_time(j["metadata"]["creationTimestamp"]) for j in started]
        assert sample(samples, "kwarp_operator_admission_wait_seconds_sum", **queue_of) == sum(waits) and max(waits) >= 1
        assert sample(samples, "kwarp_operator_admission_wait_seconds_bucket", **queue_of, le="+Inf") == 1
        assert sample(samples, "kwarp_run_progress_ratio", namespace=NS, run="demo") == 0.0

        # The same waits in the run's folder (jobs.json), where `kwarp report` reads them after the Jobs are gone.
        folder = api.folder()
        recorded = wait_value(lambda: (FileStore(store).get_json(layout.jobs_json(folder)) or {}).get("tasks", []),
                              lambda tasks: len(tasks) == 1, WAIT, message="the started Job in jobs.json")  # fmt: skip
        assert sorted(e["admission_wait_seconds"] for e in recorded) == sorted(waits)
        assert {e["queue"] for e in recorded} == {"team-a"}
        summary = json.loads((report.write_report(FileStore(store), folder, out_dir=store.parent / "report").parent
                              / "summary.json").read_text())  # fmt: skip
        assert summary["timeline"]["executor"] == "operator"
        assert summary["timeline"]["admission"]["jobs"] == 1 and summary["timeline"]["admission"]["max_seconds"] == max(waits)

        api.delete()  # the run goes with a Job still waiting: its share of the gauge and its series go too
        gone = wait_value(lambda: scrape(url),
                          lambda s: sample(s, "kwarp_operator_admission_waiting_jobs", **queue_of) == 0
                          and not any(dict(k[1]).get("run") == "demo" for k in s), WAIT,
                          message=lambda: f"the run's series removed: {scrape(url)}")  # fmt: skip
        assert sample(gone, "kwarp_operator_admission_wait_seconds_count", **queue_of) == 1  # history stays
    assert not queue.errors, queue.errors


@pytest.mark.parametrize("queued", [False, True])
def test_a_member_names_its_job_from_the_pass_that_creates_it(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path, queued: bool
) -> None:
    """status.members lists an iteration's members before their Jobs exist (state Pending, attempts 0, no
    `job`), and the pass that creates a member's Job names it (a queued run: the iteration's gang Job,
    Queued), as `kubectl get wr -o yaml` shows at any moment. Read from every version of the run the API
    server journalled, so no version written between two polls is missed."""
    names = ["demo-i0-members"] if queued else ["demo-i0-m0", "demo-i0-m1"]
    with (kueue(cluster, pods=1) if queued else contextlib.nullcontext()), RunningOperator(cluster, options()):
        api.create(warprun(store, **({"queueName": "team-a"} if queued else {})))
        finish(api, runner, "demo-prepare")  # (the one pod of quota admits prepare, not the gang of two)
        jobs_named(api, *names)
        want = {m: (names[0] if queued else names[m], "Queued" if queued else "Running") for m in (0, 1)}
        wait_value(api.status, lambda st: member_states(st) == want, WAIT, message=lambda: f"{want}: {api.status()}")

    firsts: dict[str, int] = {}  # each member Job's first version: its creation
    for job in api.history(f"/apis/batch/v1/namespaces/{NS}/jobs"):
        firsts.setdefault(job["metadata"]["name"], int(job["metadata"]["resourceVersion"]))
    created = max(firsts[n] for n in names)
    statuses, last = [], None  # (resourceVersion, status) of each version whose status changed
    for run in api.history(f"/apis/kwarp.dev/v1alpha1/namespaces/{NS}/warpruns"):
        if run.get("status") != last:
            last = run.get("status")
            statuses.append((int(run["metadata"]["resourceVersion"]), last or {}))
    for _, st in statuses:
        for m in st.get("members", []):
            assert "job" in m or (m["state"], m["attempts"]) == ("Pending", 0), st["members"]
    before = [st for rv, st in statuses if rv < created]
    assert before and [m.get("job") for m in before[-1]["members"]] == [None, None]  # listed while preparing
    first = next(st for rv, st in statuses if rv > created)  # the creating pass's
    assert {m["member"]: m.get("job") for m in first["members"]} == {m: job for m, (job, _) in want.items()}
    if queued:
        assert {m["state"] for m in first["members"]} == {"Queued"}


def jobs_named_in(api: Api, run: str, *names: str) -> dict[str, dict[str, Any]]:
    return wait_value(lambda: api.jobs(run), lambda jobs: set(names) <= set(jobs), WAIT,
                      message=lambda: f"Jobs {names}; have {sorted(api.jobs(run))}")


def services(api: Api) -> set[str]:
    return {s["metadata"]["name"] for s in api.cluster.raw("GET", f"/api/v1/namespaces/{NS}/services")["items"]}


def finish_node_member(api: Api, runner: StatusJobRunner, gang: str, member: int, nodes: int = 2) -> None:
    """Member `member` of a gang of multi-node members publishes its outputs and its N pods exit 0."""
    job = api.jobs()[gang]
    labels = job["metadata"]["labels"]
    write_outputs({**job, "metadata": {**job["metadata"], "labels": {**labels, LABEL_TASK: f"i0-m{member}"}}})
    for rank in range(nodes):
        runner.succeed_index(gang, member * nodes + rank)


def test_a_gang_of_two_node_members_waits_whole_and_a_failed_rank_restarts_its_member_whole(
    cluster: Cluster, api: Api, runner: StatusJobRunner, store: Path
) -> None:
    """M = 2 members of N = 2 nodes: one Job of 4 pods (and its Service), admitted only when all 4 fit; a
    failed rank of member 1 is one failed try of member 1 and fails the gang Job (backoffLimit 0: the member
    restarts whole), the next attempt -r1 comes with its own Service; member 0, published, is not counted
    again; a suspend withdraws the queued gang and its Service goes with it."""
    trainer = {"trainer": {"gpus": 1, "nodes": 2}}
    with kueue(cluster, pods=3, gpus=4) as queue, RunningOperator(cluster, options()):
        api.create(warprun(store, queueName="team-a", resources=trainer))  # maxRetries 1
        finish(api, runner, "demo-prepare")
        gang = jobs_named(api, "demo-i0-members")["demo-i0-members"]
        assert (gang["spec"]["completions"], gang["spec"]["backoffLimit"]) == (4, 0)
        wait_for(lambda: "demo-i0-members" in services(api), WAIT, message="the gang's Service")
        # 3 pods of quota for a gang of 4: it waits whole, both members Queued, no pod.
        status = wait_value(api.status, lambda st: member_states(st) == {0: ("demo-i0-members", "Queued"),
                                                                         1: ("demo-i0-members", "Queued")}, WAIT,
                            message=lambda: f"both members queued: {api.status()}")  # fmt: skip
        assert "demo-i0-members" in pending(api)["message"] and not index_pods(api, "demo-i0-members")  # type: ignore[index]

        queue.set_quota(pods=4)
        wait_for(lambda: runner.running() == ["demo-i0-members"], WAIT, message="the gang admitted whole")
        assert sorted(index_pods(api, "demo-i0-members")) == [0, 1, 2, 3]
        finish_node_member(api, runner, "demo-i0-members", 0)
        runner.fail_index("demo-i0-members", 3, exit_code=1, message="NCCL error: remote process exited")

        # Node 1 of member 1 failed: the gang Job failed (its pod of index 2 stopped), member 1 has one failed
        # try and restarts whole in the next attempt, which has its own Service.
        retry = jobs_named(api, "demo-i0-members-r1")["demo-i0-members-r1"]
        assert retry["spec"]["completions"] == 4
        wait_for(lambda: "demo-i0-members-r1" in services(api), WAIT, message="the retry's Service")
        # (member 0's attempts count the gang Jobs it is part of: -r1 has every member.)
        status = wait_value(api.status, lambda st: {m["member"]: (m["state"], m["attempts"]) for m in st.get("members", [])}
                            == {0: ("Succeeded", 2), 1: ("Running", 2)}, WAIT,
                            message=lambda: f"member 1 retried: {api.status()}")  # fmt: skip
        assert status["phase"] == "Training"
        assert status["failures"] == {"i0-m1": {"count": 1, "reason": status["failures"]["i0-m1"]["reason"]}}
        assert "(member 1, node 1 of 2)" in status["failures"]["i0-m1"]["reason"]
        assert status["failures"]["i0-m1"]["reason"].endswith("NCCL error: remote process exited")

        wait_for(lambda: runner.running() == ["demo-i0-members-r1"], WAIT, message="the retry admitted")
        for rank in (0, 1):  # member 0's pods find its checkpoint and return at once
            runner.succeed_index("demo-i0-members-r1", rank)
        finish_node_member(api, runner, "demo-i0-members-r1", 1)
        jobs_named(api, "demo-i0-merge")
        # A pass creates the merge Job before it writes the status that shows both members done: wait for it.
        wait_value(api.status, lambda st: {m["member"]: m["state"] for m in st.get("members", [])}
                   == {0: "Succeeded", 1: "Succeeded"}, WAIT, message=lambda: f"both members Succeeded: {api.status()}")
        finish(api, runner, "demo-i0-merge")
        finish(api, runner, "demo-i0-eval")

        # Iteration 1's gang waits (quota 3 pods); a suspend withdraws it, and its Service goes with its Job.
        queue.set_quota(pods=3)
        jobs_named(api, "demo-i1-members")
        wait_for(lambda: "demo-i1-members" in services(api), WAIT, message="iteration 1's Service")
        api.patch_spec({"suspend": True})
        wait_for(lambda: "demo-i1-members" not in api.jobs(), WAIT, message="the queued gang withdrawn")
        wait_for(lambda: "demo-i1-members" not in services(api), WAIT, message="its Service garbage-collected")
        phase_is(api, "Suspended")
    assert not queue.errors, queue.errors
