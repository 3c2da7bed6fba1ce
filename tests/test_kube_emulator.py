"""The test API server's reads at scale (tests/kube.py, tests/kube_index.py): a LIST, a watch's initial
listing and a resumed watch receive exactly the objects and events a real server would send them, and
cost the server work in proportion to what they select or missed, not to every object it holds (so
benchmarks/operator.py measures the operator, not the emulator). `ApiServer.examined` counts the
objects and journal events the server checked against a request."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .kube import Cluster, StatusJobRunner, label_selector_matches, wait_for

JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        c.raw("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
        yield c


def job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}  # fmt: skip


def create(cluster: Cluster, ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return cluster.raw("POST", JOBS.format(ns=ns), job(name, labels))


def relabel(cluster: Cluster, ns: str, name: str, labels: dict[str, str | None]) -> dict[str, Any]:
    return cluster.raw("PATCH", JOBS.format(ns=ns) + f"/{name}", {"metadata": {"labels": labels}},
                       content_type="application/merge-patch+json")  # fmt: skip


def get(cluster: Cluster, path: str, **params: str) -> Any:
    return cluster.raw("GET", path, query=list(params.items()))


def watch(cluster: Cluster, path: str, **params: str) -> list[dict[str, Any]]:
    """The events of a watch that the server ends after 1 s."""
    query = urllib.parse.urlencode({"watch": "true", "timeoutSeconds": "1", **params})
    request = urllib.request.Request(f"{cluster.url}{path}?{query}", headers={"Authorization": "Bearer test-token"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def names(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]


def test_selected_lists_and_watches_get_exactly_their_objects_after_label_changes_and_deletions(cluster: Cluster) -> None:
    labels = {
        ("default", "a1"): {"run": "a", "task": "m0"}, ("default", "a2"): {"run": "a", "task": "merge"},
        ("default", "b1"): {"run": "b", "task": "m0"}, ("default", "plain"): {},
        ("other", "a1"): {"run": "a", "task": "m0"}, ("other", "c1"): {"run": "c"},
    }  # fmt: skip
    for (ns, name), lab in labels.items():
        create(cluster, ns, name, lab)
    # Labels change and objects go: the index must follow (a2 leaves run=a, b1 loses its task, plain gains one).
    relabel(cluster, "default", "a2", {"run": "b"})
    labels["default", "a2"] = {"run": "b", "task": "merge"}
    relabel(cluster, "default", "b1", {"task": None})
    labels["default", "b1"] = {"run": "b"}
    relabel(cluster, "default", "plain", {"run": "a"})
    labels["default", "plain"] = {"run": "a"}
    cluster.raw("DELETE", JOBS.format(ns="other") + "/c1", {"propagationPolicy": "Background"})
    del labels["other", "c1"]
    create(cluster, "other", "c1", {"run": "a"})  # the same name again, now in run a
    labels["other", "c1"] = {"run": "a"}
    # Lists keep the order in which each name was first created (as this server always did): c1 its place.
    order = [("default", "a1"), ("default", "a2"), ("default", "b1"), ("default", "plain"), ("other", "a1"), ("other", "c1")]

    selectors = ["", "run=a", "run==a", "run!=a", "run in (a,c)", "run notin (a)", "task", "!task",
                 "run=a,task=m0", "run in (a,b),!task", "run=zzz", "task in (m0,merge),run!=b"]
    for selector in selectors:
        for ns in ("default", "other", None):
            path = JOBS.format(ns=ns) if ns else "/apis/batch/v1/jobs"
            want = [k for k in order if (ns is None or k[0] == ns) and label_selector_matches(selector, labels[k])]
            listed = get(cluster, path, **({"labelSelector": selector} if selector else {}))["items"]
            assert names(listed) == want, (selector, ns)
            if selector not in ("run=a", "run in (a,b),!task", "run notin (a)"):
                continue  # each watch lasts its 1-s timeout: a few suffice
            initial = watch(cluster, path, labelSelector=selector)
            assert [e["type"] for e in initial] == ["ADDED"] * len(want) and names([e["object"] for e in initial]) == want
    by_name = get(cluster, "/apis/batch/v1/jobs", fieldSelector="metadata.name=a1", labelSelector="run=a")["items"]
    assert names(by_name) == [("default", "a1"), ("other", "a1")]
    assert get(cluster, JOBS.format(ns="default"), fieldSelector="metadata.name=a1,metadata.name=b1")["items"] == []
    assert names(get(cluster, JOBS.format(ns="default"), fieldSelector="metadata.name!=a1")["items"]) == [
        ("default", "a2"), ("default", "b1"), ("default", "plain")]


def test_a_selected_list_examines_only_its_candidates(cluster: Cluster) -> None:
    """LIST run=r7 among 40 runs' Jobs checks the 3 Jobs labelled run=r7, not all 120 (what made the
    emulator's CPU per Job grow with the number of runs in benchmarks/operator.py)."""
    for run in range(40):
        for task in range(3):
            create(cluster, "default", f"r{run}-t{task}", {"run": f"r{run}", "task": f"t{task}"})
    assert cluster.server is not None
    before = cluster.server.examined
    listed = get(cluster, JOBS.format(ns="default"), labelSelector="run=r7,task!=t1")["items"]
    assert [o["metadata"]["name"] for o in listed] == ["r7-t0", "r7-t2"]
    assert cluster.server.examined - before == 3
    before = cluster.server.examined
    assert len(get(cluster, JOBS.format(ns="default"))["items"]) == 120  # no selector: all of them, once
    assert cluster.server.examined - before == 120


def test_a_resumed_watch_gets_exactly_the_later_events_it_selects_and_reads_only_those(cluster: Cluster) -> None:
    assert cluster.server is not None
    start = get(cluster, JOBS.format(ns="default"))["metadata"]["resourceVersion"]
    for i in range(60):
        create(cluster, "default", f"old-{i}", {"run": "old"})
    middle = get(cluster, JOBS.format(ns="default"))["metadata"]["resourceVersion"]
    create(cluster, "default", "new-a", {"run": "new"})
    create(cluster, "other", "new-b", {"run": "new"})
    create(cluster, "default", "else", {"run": "else"})
    relabel(cluster, "default", "new-a", {"step": "2"})

    before = cluster.server.examined
    events = watch(cluster, JOBS.format(ns="default"), resourceVersion=middle, labelSelector="run=new")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "new-a"), ("MODIFIED", "new-a")]
    assert cluster.server.examined - before == 4  # the 4 Job events after `middle` (any namespace), not the 60 before
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(middle)

    everything = watch(cluster, "/apis/batch/v1/jobs", resourceVersion=start, labelSelector="run in (old,new)")
    assert [e["object"]["metadata"]["name"] for e in everything] == [f"old-{i}" for i in range(60)] + ["new-a", "new-b", "new-a"]


def test_a_watch_from_a_version_older_than_the_journal_gets_410_gone(cluster: Cluster) -> None:
    assert cluster.server is not None
    cluster.server.journal_limit = 10
    start = get(cluster, JOBS.format(ns="default"))["metadata"]["resourceVersion"]
    for i in range(12):
        create(cluster, "default", f"j{i}", {})
    recent = watch(cluster, JOBS.format(ns="default"), resourceVersion=str(int(start) + 5))
    assert [e["object"]["metadata"]["name"] for e in recent] == [f"j{i}" for i in range(5, 12)]
    gone = watch(cluster, JOBS.format(ns="default"), resourceVersion=start)
    assert len(gone) == 1 and gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410


class FailingOnce(StatusJobRunner):
    """A Job controller whose first pod creation for Job `unlucky` is refused (as under load it may be)."""

    def __init__(self, cluster: Cluster):
        super().__init__(cluster)
        self.refused = False

    def _create_pod(self, job: dict[str, Any]) -> str:
        if job["metadata"]["name"] == "unlucky" and not self.refused:
            self.refused = True
            raise RuntimeError("pod creation refused")
        return super()._create_pod(job)


def test_the_job_runner_lists_again_after_a_failed_event_and_not_every_few_seconds(cluster: Cluster) -> None:
    """A Job whose start failed is started when the runner lists again, at once (not at its resync), and
    an idle runner does not LIST every Job every few seconds (that cost would grow with the Jobs)."""
    for i in range(30):
        create(cluster, "default", f"idle-{i}", {})
    with FailingOnce(cluster) as runner:
        runner.resync_seconds = 3600.0
        wait_for(lambda: len(runner.started) == 30, 20, message="the 30 idle Jobs started")
        create(cluster, "default", "unlucky", {})
        wait_for(lambda: "unlucky" in runner.started, 20, message="the Job whose first pod creation failed")
        assert runner.refused and [str(e) for e in runner.errors] == ["pod creation refused"]
        runner.errors.clear()
        assert cluster.server is not None
        before = cluster.server.examined
        time.sleep(4)  # longer than the runner's old 3-s relisting period; asserts what was read, not when
        assert cluster.server.examined - before < 31  # its watches resumed, no LIST of the 31 Jobs


def test_the_job_runners_resyncs_find_no_job_its_watch_went_past(cluster: Cluster) -> None:
    """Jobs created while the runner resyncs often: its watch (resumed every second, from the version of
    the last event it handled) delivers every one of them; a resync keeps the watch's place."""
    with StatusJobRunner(cluster) as runner:
        runner.resync_seconds = 0.5
        for i in range(40):
            create(cluster, "default", f"j{i}", {})
            if i % 10 == 9:
                time.sleep(0.6)  # let a resync happen between creations
        wait_for(lambda: len(runner.started) == 40, 30, message="40 Jobs started")
        time.sleep(1.5)  # a resync after the last Job, and the watch past it
        assert runner.missed_by_watch() == 0 and not runner.errors
        assert sorted(runner.started) == sorted(f"j{i}" for i in range(40))


def test_a_job_runner_on_several_threads_starts_and_completes_each_job_once(cluster: Cluster) -> None:
    """workers=4 (the benchmark's Job controller): every Job started once, its pod made once, Complete."""
    for i in range(40):
        create(cluster, "default", f"w{i}", {})
    with StatusJobRunner(cluster, outcome=lambda job: (True, ""), workers=4) as runner:
        wait_for(lambda: len(runner.started) >= 40 and all(
            any(c["type"] == "Complete" for c in (j.get("status") or {}).get("conditions") or [])
            for j in get(cluster, JOBS.format(ns="default"))["items"]), 30, message="40 Jobs Complete")
        assert sorted(runner.started) == sorted(f"w{i}" for i in range(40)) and not runner.errors
        pods = get(cluster, "/api/v1/namespaces/default/pods")["items"]
        assert sorted(p["metadata"]["labels"]["job-name"] for p in pods) == sorted(f"w{i}" for i in range(40))
