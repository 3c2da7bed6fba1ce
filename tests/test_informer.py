"""The operator's own informer of its Jobs (operator/informer.py) against the API-server emulator, and the
gate that keeps it from queueing passes while kopf's peering pauses the operator (operator/handlers.py)."""

from __future__ import annotations

import datetime
import gc
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kwarp.core.crd import crd
from kwarp.operator.informer import JobInformer, JobInformers
from kwarp.operator.jobs import LABEL_RUN

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for
from .operator_harness import NS, ROOT, WAIT, Api, finish, jobs_named, options, warprun

JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"


def job(name: str, run: str = "r") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {LABEL_RUN: run}},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "c", "image": "busybox"}]}}}}  # fmt: skip


class Seen:
    """A sink that records (name, deleted) and can hold the informer's thread on one Job's first sight."""

    def __init__(self, hold: str | None = None) -> None:
        self.events: list[tuple[str, bool]] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self.hold, self.held, self.release = hold, threading.Event(), threading.Event()

    def __call__(self, job: dict[str, Any], deleted: bool) -> None:
        name = job["metadata"]["name"]
        self.events.append((name, deleted))
        self.bodies[name] = job
        if name == self.hold and not self.held.is_set():
            self.held.set()
            self.release.wait(WAIT)

    def saw(self, *wanted: tuple[str, bool]) -> bool:
        return set(wanted) <= set(self.events)


@pytest.fixture
def informed(cluster: Cluster) -> Iterator[tuple[Seen, list[JobInformer]]]:
    """A Seen sink and the informers a test starts (stopped at the end, each thread gone)."""
    started: list[JobInformer] = []
    yield Seen(), started
    for informer in started:
        informer.stop(10)
        assert not informer.alive()


def test_a_listing_then_each_event_in_order_deletions_included(cluster: Cluster, informed: Any) -> None:
    seen, started = informed
    cluster.raw("POST", JOBS, job("a"))
    cluster.raw("POST", JOBS, {**job("other"), "metadata": {"name": "other"}})  # no run label: not watched
    informer = JobInformer(cluster.configuration, seen, namespace=NS, timeout_seconds=1)
    started.append(informer.start())
    wait_for(lambda: seen.saw(("a", False)), WAIT, message=lambda: f"the listed Job; saw {seen.events}")
    cluster.raw("POST", JOBS, job("b"))
    cluster.raw("PATCH", f"{JOBS}/a", {"metadata": {"annotations": {"x": "1"}}},
                content_type="application/merge-patch+json")  # fmt: skip
    cluster.raw("DELETE", f"{JOBS}/b")
    wait_for(lambda: seen.saw(("b", True)), WAIT, message=lambda: f"b deleted; saw {seen.events}")
    time.sleep(2.5)  # the server ends each watch after 1 s: the informer resumes it from its version
    assert seen.events == [("a", False), ("b", False), ("a", False), ("b", True)]
    assert seen.bodies["a"]["metadata"]["annotations"] == {"x": "1"}
    assert informer.lists == 1 and informer.errors == 0


def test_a_watch_resumed_after_410_lists_again_and_reports_the_deletions_it_missed(cluster: Cluster,
                                                                                 informed: Any) -> None:  # fmt: skip
    _, started = informed
    seen = Seen(hold="hold")
    assert cluster.server is not None
    cluster.server.journal_limit = 2  # watch events kept per resource: a version 3 events back is Gone
    for name in ("kept", "gone"):
        cluster.raw("POST", JOBS, job(name))
    informer = JobInformer(cluster.configuration, seen, namespace=NS, timeout_seconds=1)
    started.append(informer.start())
    wait_for(lambda: seen.saw(("kept", False), ("gone", False)), WAIT, message=lambda: f"listed; saw {seen.events}")
    cluster.raw("POST", JOBS, job("hold"))
    assert seen.held.wait(WAIT)  # the informer's thread is in the sink, its version that of "hold"
    time.sleep(1.5)  # meanwhile the server ends that watch (timeoutSeconds=1)
    cluster.raw("DELETE", f"{JOBS}/gone")
    for name in ("new-1", "new-2", "new-3"):
        cluster.raw("POST", JOBS, job(name))
    seen.release.set()
    wait_for(lambda: seen.saw(("gone", True), ("new-3", False)), WAIT, message=lambda: f"the gap; saw {seen.events}")
    assert informer.lists == 2  # resumed from "hold"'s version: 410 Gone, so listed again
    after = seen.events[seen.events.index(("hold", False)) + 1 :]
    assert after[0] == ("gone", True)  # found missing by the LIST, reported before its items
    assert sorted(after[1:]) == [("hold", False), ("kept", False), ("new-1", False), ("new-2", False), ("new-3", False)]
    assert informer.errors == 0
    cluster.raw("DELETE", f"{JOBS}/kept")  # and the watch goes on from the new LIST's version
    wait_for(lambda: seen.saw(("kept", True)), WAIT, message=lambda: f"kept deleted; saw {seen.events}")


def test_errors_are_retried_with_backoff_and_the_configuration_read_again(cluster: Cluster, informed: Any) -> None:
    seen, started = informed
    calls = []

    def configuration() -> kubernetes.client.Configuration:
        cfg = cluster.configuration()
        calls.append(cfg)
        if len(calls) <= 2:  # the first two connections are answered 404 (a path the API server does not serve)
            cfg.host = f"{cfg.host}/nowhere"
            cfg.refresh_api_key_hook = None  # the kubeconfig loader's hook would put the kubeconfig's host back
        return cfg

    cluster.raw("POST", JOBS, job("a"))
    informer = JobInformer(configuration, seen, namespace=NS, backoff=(0.05, 0.1))
    started.append(informer.start())
    wait_for(lambda: seen.saw(("a", False)), WAIT, message=lambda: f"the Job after reconnecting; saw {seen.events}")
    assert informer.errors == 2 and len(calls) == 3 and informer.alive()


def test_stop_interrupts_a_silent_watch_and_leaves_no_thread(cluster: Cluster) -> None:
    group = JobInformers(cluster.configuration, lambda job, deleted: None, namespaces=[NS, "elsewhere"])
    group.start()
    threads = {t.name for t in threading.enumerate() if t.name.startswith("kwarp-job-informer")}
    assert threads == {f"kwarp-job-informer-{NS}", "kwarp-job-informer-elsewhere"}
    wait_for(lambda: all(i.lists == 1 for i in group.informers), WAIT, message="both listed")
    time.sleep(0.3)  # in their watches now (600 s each)
    t0 = time.monotonic()
    group.stop(10)
    assert time.monotonic() - t0 < 2
    assert not group.alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("kwarp-job-informer")]


def health(port: int) -> Any:
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    except (urllib.error.URLError, ConnectionError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_peering_pauses_job_driven_reconciles(tmp_path: Path, store: Path) -> None:
    """kopf pauses when its peering shows an operator of higher priority: Job events must then start no pass here
    (the informer is not kopf's; operator/handlers.py `serving` follows kopf's pause through its daemons)."""
    peering_crds = [d for d in yaml.safe_load_all((ROOT / "operator" / "peering_crds.yaml").read_text()) if d]
    peering = f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/kwarp"
    port = free_port()
    with Cluster(tmp_path, crds=[crd(), *peering_crds]) as cluster:
        cluster.raw("POST", f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings",
                    {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kwarp"}})  # fmt: skip
        api = Api(cluster)
        with StatusJobRunner(cluster) as runner, \
                RunningOperator(cluster, options(standalone=None, peering="kwarp", liveness_port=port)):  # fmt: skip
            api.create(warprun(store))
            jobs_named(api, "demo-prepare")
            probe = wait_for(lambda: (h := health(port)) and h["jobs_informer"]["runs_served"] == 1 and h, WAIT,
                             message="the run served")  # fmt: skip
            assert probe["jobs_informer"]["watches"][NS]["alive"]

            lastseen = datetime.datetime.now(datetime.UTC).isoformat()
            cluster.raw("PATCH", peering, {"status": {"other": {"priority": 100, "lifetime": 60, "lastseen": lastseen}}},
                        content_type="application/merge-patch+json")  # fmt: skip
            wait_for(lambda: (h := health(port)) and h["jobs_informer"]["runs_served"] == 0, WAIT,
                     message="kopf paused: no run served")  # fmt: skip
            finish(api, runner, "demo-prepare")  # seen by the informer, which queues no pass while paused
            time.sleep(3)
            assert set(api.jobs()) == {"demo-prepare"}, "a paused operator started the members"

            cluster.raw("PATCH", peering, {"status": {"other": None}}, content_type="application/merge-patch+json")
            wait_for(lambda: len(api.jobs()) > 1, WAIT, message="resumed: the members after the prepare Job")


def test_the_liveness_probe_fails_while_the_informer_is_not_running(cluster: Cluster) -> None:
    port = free_port()
    with RunningOperator(cluster, options(liveness_port=port)):
        probe = wait_for(lambda: health(port), WAIT, message="the liveness endpoint")
        assert probe["jobs_informer"]["watches"][NS]["alive"]
        # The operator's informer, found as a test can (no handle leaves serve); stopped as if its thread had died.
        # `type(o) is`, not isinstance: gc also holds weak proxies, and isinstance on a dead one raises ReferenceError.
        informer = next(o for o in gc.get_objects() if type(o) is JobInformer and o.alive())
        informer.stop(10)
        time.sleep(10)  # kopf answers a probe from its last result for up to 10 s
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert failed.value.code == 500
