"""The Job controller of the test cluster: runners that watch Jobs and keep their status and pods.

`JobRunner` follows a namespace's Jobs as the Job controller does (and creates each started Job's Pod,
owned by the Job); `StatusJobRunner` marks them running, complete or failed through
`patch_namespaced_job_status` (integration tests decide outcomes). tests/kube_pods.py's
`ProcessJobRunner` runs their containers as local processes.
"""

from __future__ import annotations

import dataclasses
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import kubernetes

from tests.background import Background
from tests.kube_store import Obj, now_rfc3339

if TYPE_CHECKING:
    from tests.kube import Cluster

def job_status_running(start: str) -> Obj:
    return {"startTime": start, "active": 1, "ready": 1, "conditions": None, "succeeded": None, "failed": None}


def job_status_succeeded(start: str, end: str) -> Obj:
    return {
        "startTime": start, "completionTime": end, "active": None, "ready": 0, "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": end},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": end},
        ],
    }


def job_status_failed(start: str, end: str, reason: str = "BackoffLimitExceeded",
                      message: str = "Job has reached the specified backoff limit") -> Obj:
    return {
        "startTime": start, "active": None, "ready": 0, "failed": 1,
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastTransitionTime": end},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": end},
        ],
    }


def job_status_suspended(start: str | None, now: str) -> Obj:
    return {"startTime": start, "active": None, "ready": 0, "conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended",
         "lastTransitionTime": now}]}


def pod_failure_action(job: Obj, exit_code: int, conditions: list[Obj]) -> str | None:
    """What the Job's spec.podFailurePolicy says of a failed pod (the Job controller's reading): the action
    of the first rule that matches (Ignore, FailJob, Count), None when none does. A rule matches by
    onExitCodes (In / NotIn its values; NotIn never matches 0) or by any of its onPodConditions (a pod
    condition of that type with that status, "True" when left out)."""
    for rule in ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []:
        codes = rule.get("onExitCodes")
        if codes is not None:
            listed = exit_code in (codes.get("values") or [])
            if listed if codes.get("operator") == "In" else (not listed and exit_code != 0):
                return rule["action"]
        for wanted in rule.get("onPodConditions") or []:
            if any(c.get("type") == wanted.get("type") and c.get("status") == wanted.get("status", "True")
                   for c in conditions):  # fmt: skip
                return rule["action"]
    return None


def job_finished(job: Obj) -> bool:
    """Complete or Failed: the Job controller is done with it (and Kueue releases its quota)."""
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class RawWatch(kubernetes.watch.Watch):
    """A watch whose events carry the object as the server sent it (`raw_object`, also `object`), not also as
    a client model: the runners read only the JSON, and building a V1Job per event (its timestamps parsed by
    dateutil) was half the Job controller's CPU under benchmarks/operator.py. Errors (410 Gone included)
    raise as from kubernetes.watch.Watch."""

    def get_return_type(self, func: Callable[..., object]) -> None:  # type: ignore[override]
        return None  # unmarshal_event then stops at the JSON


def unread(response: Any) -> None:
    """Finish a response whose body the runner does not use (a write's echo of the object: asked with
    _preload_content=False, so the client does not build a model of it); error statuses raised already."""
    response.read()
    response.release_conn()


@dataclass
class _Tracked:
    job: Obj
    start: str | None = None
    pod: str | None = None
    finished: bool = False
    suspended: bool = False
    active_since: float | None = None  # monotonic; the Job controller restarts the deadline on resume
    # An Indexed Job: the current pod of each index, the indexes that succeeded, pods failed (counted
    # against backoffLimit; a DisruptionTarget failure is not, by the operator's podFailurePolicy).
    pods: dict[int, str] = dataclasses.field(default_factory=dict)
    completed: set[int] = dataclasses.field(default_factory=set)
    failed: int = 0


class JobRunner(Background):
    """Stands in for the Job controller (and the kubelet): watches Jobs of a namespace, keeps their status.

    Subclasses decide what "running a Job" means. The runner creates one Pod per started Job, owned by
    the Job (so garbage collection reaches it), and writes the container's termination into it.

    It follows Jobs as an informer does: LIST, watch from the LIST's resourceVersion, and LIST again when
    the watch breaks (an error, 410 Gone) or handling an event failed (that event would otherwise be lost:
    the watch resumes after it), and every `resync_seconds` (300) as a safety net. A LIST costs the server and
    this runner work in proportion to every Job of the namespace, so it is not repeated every few seconds:
    with 9000 Jobs (benchmarks/operator.py --runs 1000) that would be most of the benchmark's cost.
    A resync keeps the watch's place; `missed_by_watch()` counts the Jobs it found that the watch then
    went past without delivering (0 when watches lose nothing).

    With `workers` > 1 (benchmarks/operator.py), events are handled on that many threads, each Job's on
    one thread (hash of its name) and under a lock of its own, as the Job controller syncs several Jobs
    at once; tests keep one thread and one lock.
    """

    resync_seconds = 300.0  # a LIST of every Job: its cost grows with the Jobs, so rarely

    def __init__(self, cluster: Cluster, namespace: str | None = None, workers: int = 1):
        super().__init__(type(self).__name__)  # the watch's thread
        self.cluster = cluster
        self.namespace = namespace or cluster.namespace
        self.batch = kubernetes.client.BatchV1Api(cluster.client())
        self.core = kubernetes.client.CoreV1Api(cluster.client())
        self.jobs: dict[str, _Tracked] = {}
        self.lock = threading.RLock()
        self.errors: list[BaseException] = []
        self._listed_first: dict[tuple[str, str], int] = {}  # (name, uid) a resync saw before the watch: its rv
        self._watched: set[tuple[str, str]] = set()  # (name, uid) the watch delivered
        self._watch_rv = 0  # of the last event the watch delivered
        self._deadlined: set[str] = set()  # unfinished Jobs with spec.activeDeadlineSeconds
        self.workers = workers
        self._queues: list[queue.Queue[tuple[str, Obj] | None]] = [queue.Queue() for _ in range(workers if workers > 1 else 0)]
        self.worker_threads = [threading.Thread(target=self._work_events, args=(q,), daemon=True,
                                                name=f"{type(self).__name__}-{i}") for i, q in enumerate(self._queues)]  # fmt: skip
        self._job_locks: dict[str, threading.RLock] = {}
        self._broken = threading.Event()  # a worker failed to handle an event: list again

    def __enter__(self) -> Self:
        for thread in self.worker_threads:
            thread.start()
        return super().__enter__()  # the watch

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for q in self._queues:
            q.put(None)
        for thread in self.worker_threads:
            thread.join(10)
        self.shutdown()

    def _lock_for(self, name: str) -> threading.RLock:
        if self.workers <= 1:
            return self.lock
        with self.lock:
            return self._job_locks.setdefault(name, threading.RLock())

    def _handle(self, kind: str, job: Obj) -> None:
        if not self._queues:
            self._on_event(kind, job)
        else:
            self._queues[hash(job["metadata"]["name"]) % len(self._queues)].put((kind, job))

    def _work_events(self, events: queue.Queue[tuple[str, Obj] | None]) -> None:
        while (item := events.get()) is not None:
            try:
                self._on_event(*item)
            except Exception as err:  # as in the watch (_run): reported, and the next round lists again
                self.errors.append(err)
                self._broken.set()

    def shutdown(self) -> None:
        """Stop whatever the runner started."""

    def _run(self) -> None:  # the watch
        rv: str | None = None
        listed = 0.0
        while not self._stop.is_set():
            try:
                if self._broken.is_set():
                    self._broken.clear()
                    rv = None
                resync = rv is not None and time.monotonic() - listed > self.resync_seconds
                if rv is None or resync:
                    listed = time.monotonic()
                    listing = self.cluster.raw("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
                    if not resync:
                        self._listed_first.clear()  # the watch restarts after these: it will not deliver them
                    for job in listing["items"]:
                        key = (job["metadata"]["name"], job["metadata"]["uid"])
                        if resync and key not in self._watched:
                            self._listed_first[key] = int(job["metadata"]["resourceVersion"])
                        self._handle("ADDED", job)  # a Job seen before is only looked at again
                    if not resync:  # a resync keeps the watch's place: what it has not delivered yet still comes
                        rv = listing["metadata"]["resourceVersion"]
                stream = RawWatch().stream(
                    self.batch.list_namespaced_job, self.namespace, resource_version=rv, timeout_seconds=1,
                )
                for event in stream:
                    job = event["raw_object"]
                    if event["type"] == "ERROR":
                        rv = None
                        break
                    self._watched.add((job["metadata"]["name"], job["metadata"]["uid"]))
                    self._handle(event["type"], job)
                    rv = job["metadata"]["resourceVersion"]  # after handling: a failed event is listed again
                    self._watch_rv = int(rv)
                    if self._stop.is_set():
                        break
                self.enforce_deadlines()
            except Exception as err:  # a runner must keep running; the test sees its errors
                if self._stop.is_set():
                    break
                self.errors.append(err)
                rv = None
                time.sleep(0.2)

    def missed_by_watch(self) -> int:
        """Jobs a resync LIST found that the watch has gone past without delivering (it delivers in
        resourceVersion order, so a Job listed at version v is seen by the time the watch reaches v)."""
        return sum(1 for key, listed_rv in list(self._listed_first.items())
                   if key not in self._watched and listed_rv <= self._watch_rv)

    def _on_event(self, kind: str, job: Obj) -> None:
        name = job["metadata"]["name"]
        with self._lock_for(name):
            if kind == "DELETED":
                self._deadlined.discard(name)
                tracked = self.jobs.pop(name, None)
                if tracked is not None:
                    self.on_deleted(tracked)
                return
            tracked = self.jobs.get(name)
            if tracked is None or tracked.job["metadata"]["uid"] != job["metadata"]["uid"]:
                tracked = self.jobs[name] = _Tracked(job=job)
                if job_finished(job):
                    tracked.finished = True
                    self._deadlined.discard(name)
                    return
            tracked.job = job
            if tracked.finished:
                return
            if job["spec"].get("activeDeadlineSeconds") is not None:
                self._deadlined.add(name)
            else:
                self._deadlined.discard(name)
            suspend = bool(job["spec"].get("suspend"))
            if suspend and not tracked.suspended and tracked.start is not None:
                tracked.suspended = True
                self.on_suspend(tracked)
                self._patch_status(name, job_status_suspended(tracked.start, now_rfc3339()))
            elif suspend and tracked.start is None and not tracked.suspended:
                tracked.suspended = True
                self._patch_status(name, job_status_suspended(None, now_rfc3339()))
            elif not suspend and (tracked.start is None or tracked.suspended):
                # Marked started only once its pod and status are written: if either fails, the LIST that
                # follows the error starts it again.
                resumed = tracked.suspended
                start = tracked.start or now_rfc3339()
                pods: dict[int, str] = {}
                if job["spec"].get("completionMode") == "Indexed":
                    pods = {i: self._create_pod(job, i) for i in range(int(job["spec"]["completions"]))
                            if i not in tracked.completed}  # fmt: skip
                    pod = pods.get(0)
                else:
                    pod = self._create_pod(job)
                self._patch_status(name, {**job_status_running(start),
                                          **({"conditions": [{"type": "Suspended", "status": "False",
                                                              "reason": "JobResumed", "message": "Job resumed",
                                                              "lastTransitionTime": now_rfc3339()}]}
                                             if resumed else {})})
                tracked.suspended, tracked.start, tracked.active_since, tracked.pod = False, start, time.monotonic(), pod
                tracked.pods = pods
                self.on_start(tracked)
        self.enforce_deadlines()

    def enforce_deadlines(self) -> None:
        """spec.activeDeadlineSeconds as the Job controller applies it: a Job active (not suspended) longer
        than its deadline fails with reason DeadlineExceeded, its pod stopped. The deadline may be set or
        lowered on a running Job (a patch), which the next event or watch round sees (within a second)."""
        with self.lock:
            for name in sorted(self._deadlined):  # not every Job: this runs after each event
                tracked = self.jobs.get(name)
                if tracked is None or tracked.finished:
                    self._deadlined.discard(name)
                    continue
                deadline = tracked.job["spec"].get("activeDeadlineSeconds")
                if (deadline is None or tracked.suspended or tracked.active_since is None
                        or time.monotonic() - tracked.active_since < deadline):  # fmt: skip
                    continue
                self._deadlined.discard(name)
                tracked.finished = True
                self.on_deadline(tracked)
                self._finish_pod(tracked, 143, "")
                self._patch_status(name, job_status_failed(tracked.start or now_rfc3339(), now_rfc3339(),
                                                           "DeadlineExceeded",
                                                           "Job was active longer than specified deadline"))

    # -- hooks
    def on_start(self, tracked: _Tracked) -> None: ...
    def on_suspend(self, tracked: _Tracked) -> None: ...
    def on_deleted(self, tracked: _Tracked) -> None: ...
    def on_deadline(self, tracked: _Tracked) -> None: ...

    # -- status writers (what the Job controller would write)
    def _patch_status(self, name: str, status: Obj) -> None:
        try:
            unread(self.batch.patch_namespaced_job_status(name, self.namespace, {"status": status},
                                                          _content_type="application/merge-patch+json",
                                                          _preload_content=False))
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise

    def _create_pod(self, job: Obj, index: int | None = None) -> str:
        meta = job["metadata"]
        name = f"{meta['name']}-{'' if index is None else f'{index}-'}{secrets.token_hex(3)[:5]}"
        container = job["spec"]["template"]["spec"]["containers"][0]
        labels = dict(job["spec"]["template"].get("metadata", {}).get("labels", {}))
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"]})
        annotations = {}
        if index is not None:  # what the Job controller puts on an Indexed Job's pod (the label from 1.28)
            annotations[COMPLETION_INDEX_KEY] = labels[COMPLETION_INDEX_KEY] = str(index)
        unread(self.core.create_namespaced_pod(self.namespace, _preload_content=False, body={
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations, "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"restartPolicy": "Never", "containers": [{"name": container["name"], "image": container["image"]}]},
        }))
        return name

    def _finish_pod(self, tracked: _Tracked, exit_code: int, message: str = "", pod: str | None = None,
                    disrupted: bool = False) -> None:  # fmt: skip
        pod = pod or tracked.pod
        if pod is None:
            return
        reason = "Completed" if exit_code == 0 else "Error"
        container = tracked.job["spec"]["template"]["spec"]["containers"][0]["name"]
        status: Obj = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "",
                                   "imageID": "", "state": {"terminated": {
                                       "exitCode": exit_code, "reason": reason, "message": message,
                                       "finishedAt": now_rfc3339()}}}],
        }  # fmt: skip
        if disrupted:  # evicted or preempted: the condition the operator's podFailurePolicy ignores
            status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                     "message": "Eviction API: evicting", "lastTransitionTime": now_rfc3339()}]  # fmt: skip
        try:
            unread(self.core.patch_namespaced_pod_status(pod, self.namespace, {"status": status}, _preload_content=False,
                                                         _content_type="application/merge-patch+json"))  # fmt: skip
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise

    # -- an Indexed Job's pods, one index at a time (what the Job controller does with backoffLimit > 0)
    def _indexed_status(self, tracked: _Tracked) -> Obj:
        spec = tracked.job["spec"]
        return {"startTime": tracked.start, "active": len(tracked.pods) or None, "ready": len(tracked.pods),
                "succeeded": len(tracked.completed) or None, "failed": tracked.failed or None,
                "completedIndexes": index_ranges(tracked.completed) or None,
                "conditions": None} if len(tracked.completed) < int(spec["completions"]) else {
                **job_status_succeeded(tracked.start or now_rfc3339(), now_rfc3339()),
                "succeeded": len(tracked.completed), "completedIndexes": index_ranges(tracked.completed)}  # fmt: skip

    def succeed_index(self, name: str, index: int) -> None:
        """The pod of `index` exits 0: the index is complete (the Job is, once every index is)."""
        with self.lock:
            tracked = self.jobs[name]
            pod = tracked.pods.pop(index)
            self._finish_pod(tracked, 0, pod=pod)
            tracked.completed.add(index)
            status = self._indexed_status(tracked)
            tracked.finished = bool(status.get("conditions"))
            self._patch_status(name, status)

    def fail_index(self, name: str, index: int, exit_code: int = 1, message: str = "", disrupted: bool = False) -> None:
        """The pod of `index` fails. Counted against backoffLimit unless disrupted; within it the index gets a
        new pod, beyond it the Job fails and its other pods are deleted (as the Job controller does)."""
        with self.lock:
            tracked = self.jobs[name]
            pod = tracked.pods.pop(index)
            self._finish_pod(tracked, exit_code, message, pod=pod, disrupted=disrupted)
            conditions = [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []
            ignored = disrupted or pod_failure_action(tracked.job, exit_code, conditions) == "Ignore"
            tracked.failed += 0 if ignored else 1
            if tracked.failed > int(tracked.job["spec"].get("backoffLimit", 6)):
                tracked.finished = True
                for other in tracked.pods.values():
                    unread(self.core.delete_namespaced_pod(other, self.namespace, _preload_content=False))
                tracked.pods = {}
                self._patch_status(name, {**job_status_failed(tracked.start or now_rfc3339(), now_rfc3339()),
                                          "failed": tracked.failed, "completedIndexes": index_ranges(tracked.completed) or None})  # fmt: skip
                return
            tracked.pods[index] = self._create_pod(tracked.job, index)
            self._patch_status(name, self._indexed_status(tracked))

    def succeed(self, name: str) -> None:
        tracked = self._finish(name)
        if tracked is not None:
            self._finish_pod(tracked, 0)
            self._patch_status(name, job_status_succeeded(tracked.start or now_rfc3339(), now_rfc3339()))

    def replace_pod(self, name: str, exit_code: int, message: str = "") -> None:
        """The pod of a (not Indexed) Job failed in a way its podFailurePolicy ignores: the pod is marked
        failed and the Job, still running and not charged, gets a new pod (`on_start` runs it)."""
        with self._lock_for(name):
            tracked = self.jobs[name]
            if tracked.finished:
                return
            self._finish_pod(tracked, exit_code, message)
            tracked.pod = self._create_pod(tracked.job)
        self.on_start(tracked)

    def fail(self, name: str, exit_code: int = 1, message: str = "") -> None:
        tracked = self._finish(name)
        if tracked is not None:
            self._finish_pod(tracked, exit_code, message)
            self._patch_status(name, job_status_failed(tracked.start or now_rfc3339(), now_rfc3339()))

    def _finish(self, name: str) -> _Tracked | None:
        """Mark a Job finished, once; the caller writes its pod and status outside the lock, so Jobs that
        finish on other threads (pods running side by side) do not wait for each other."""
        with self._lock_for(name):
            tracked = self.jobs[name]
            if tracked.finished:
                return None
            tracked.finished = True
            return tracked

    def running(self) -> list[str]:
        with self.lock:
            return sorted(n for n, t in list(self.jobs.items()) if t.start and not t.finished and not t.suspended)


Outcome = Callable[[Obj], "tuple[bool, str] | None"]


class StatusJobRunner(JobRunner):
    """Integration tests' Job controller: Jobs start at once; an `outcome(job)` callback (when given)
    does the Job's work (e.g. writes its outputs into the store) and says (succeeded, message), or None
    to leave the Job running for the test to finish with `succeed(name)` / `fail(name, ...)`.
    """

    def __init__(self, cluster: Cluster, outcome: Outcome | None = None, namespace: str | None = None,
                 workers: int = 1):  # fmt: skip
        super().__init__(cluster, namespace, workers)
        self.outcome = outcome
        self.started: list[str] = []

    def on_start(self, tracked: _Tracked) -> None:
        name = tracked.job["metadata"]["name"]
        self.started.append(name)
        if self.outcome is None:
            return
        result = self.outcome(tracked.job)
        if result is None:
            return
        ok, message = result
        if ok:
            self.succeed(name)
        else:
            self.fail(name, exit_code=1, message=message)


COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_FIELD = f"metadata.annotations['{COMPLETION_INDEX_KEY}']"


def index_ranges(indexes: set[int]) -> str:
    """An Indexed Job's status.completedIndexes: sorted, runs written as ranges ("0,2-4")."""
    out: list[str] = []
    for i in sorted(indexes):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)
