"""The cluster that benchmarks/operator.py runs the operator in: the API server (tests/kube.py's emulator)
in a child process, clients that each send a bearer token of their own (so the server counts each one's
requests apart), the Job controller with its pods (tests/kube_jobs.py's StatusJobRunner; a child process,
or threads of the benchmark's), and the benchmark's watches of Jobs and WarpRuns.
"""

from __future__ import annotations

import gc
import heapq
import json
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402

from benchmarks.thread_profile import ThreadProfiles  # noqa: E402
from kwarp.core.crd import crd  # noqa: E402
from kwarp.operator.jobs import LABEL_RUN  # noqa: E402
from tests.background import Background  # noqa: E402
from tests.kube import Cluster, StatusJobRunner  # noqa: E402
from tests.operator_harness import write_outputs  # noqa: E402

NS = "default"
# The clients' bearer tokens: the API server counts each one's requests apart.
OPERATOR, CONTROLLER, BENCHMARK = "operator", "job-controller", "benchmark"


# ------------------------------------------------------------------ garbage collection pauses


class GcPauses:
    """Each garbage collection of this process (gc.callbacks): when it began (monotonic, one clock for every
    process on the machine), how long it took, its generation. A full collection stops the process's
    threads while it walks every tracked object, so with thousands of Jobs held in memory it can stall a
    process for a second: this says which process stalled, when, and for how long."""

    def __init__(self, threshold2: int | None = None) -> None:
        if threshold2 is not None:  # --gc-threshold2: how many younger collections a full one waits for
            gc.set_threshold(*gc.get_threshold()[:2], threshold2)
        self.pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def close(self) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.monotonic()
        else:
            self.pauses.append((self._start, time.monotonic() - self._start, info["generation"]))


# ------------------------------------------------------------------ the API server, in a child process


def serve_api(workdir: str, ready: Any, stop: Any, conn: Any, gc_threshold2: int | None = None,
              profile_dir: str | None = None) -> None:
    """The API server; answers each request on `conn` with the requests it has served so far, by client
    (bearer token), group, resource and verb (tests/kube_server.py `calls_by`), or, asked "gc", with its
    garbage collection pauses. With `profile_dir`, its threads' CPU profile goes to api_server.pstats there."""
    sys.path.insert(0, str(ROOT))
    pauses = GcPauses(gc_threshold2)
    profiles = ThreadProfiles().start() if profile_dir else None
    with Cluster(Path(workdir), crds=[crd()]) as cluster:
        ready.set()
        while not stop.is_set():
            if conn.poll(0.5):
                if conn.recv() == "gc":
                    conn.send(list(pauses.pauses))
                    continue
                assert cluster.server is not None
                while True:
                    try:  # the server's loop thread counts on while this copies
                        conn.send(dict(cluster.server.calls_by))
                        break
                    except RuntimeError:
                        continue
    if profiles is not None and profile_dir:
        profiles.dump(Path(profile_dir) / "api_server.pstats")


class Client(Cluster):
    """The client side of the API server in `workdir`, as one client with a bearer token of its own, so that
    the server counts each client's requests apart: the operator (kopf's own requests too), the Job
    controller, the benchmark (its runs and watches)."""

    def __init__(self, workdir: Path, token: str):
        super().__init__(workdir)
        self.token = token

    def configuration(self) -> kubernetes.client.Configuration:
        cfg = super().configuration()
        cfg.api_key = {"authorization": f"Bearer {self.token}"}
        cfg.refresh_api_key_hook = None  # the kubeconfig loader's hook would put the kubeconfig's token back
        return cfg


# ------------------------------------------------------------------ the Job controller, in a child process


def serve_controller(workdir: str, conn: Any, job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0,
                     gc_threshold2: int | None = None, profile_dir: str | None = None) -> None:
    """The Job controller and its pods in a process of their own, talking to the API server over HTTP as
    in this process: in a cluster the Job controller is kube-controller-manager, not a thread beside the
    operator, and one GIL shared with kopf's event loop delayed the operator's Job events (issue 17).
    Answers each request on `conn` with what the benchmark reads of it: the completion times (monotonic
    clock: one clock for every process on the machine), the Jobs its watch missed, its errors. With
    `profile_dir`, its threads' CPU profile goes to job_controller.pstats there."""
    sys.path.insert(0, str(ROOT))
    # The pods write checkpoints with torch (write_outputs imports it on first use): imported at start-up, as a
    # kubelet's image is pulled before its pods run, so that the ~1-2 s of CPU of one import is not counted
    # as the first Jobs' work in the load scenario's CPU per Job.
    import torch  # noqa: F401
    cluster = Client(Path(workdir), CONTROLLER)  # the client side only
    pauses = GcPauses(gc_threshold2)
    profiles = ThreadProfiles().start() if profile_dir else None
    with TimedRunner(cluster, {}, {}, job_seconds=job_seconds, seed=seed) as runner:
        conn.send("ready")
        while conn.recv() != "stop":
            conn.send({"completed": dict(runner.completed), "ran": dict(runner.ran), "gc": list(pauses.pauses),
                       "missed_by_watch": runner.missed_by_watch(),
                       "errors": [repr(err) for err in runner.errors]})  # fmt: skip
    if profiles is not None and profile_dir:
        profiles.dump(Path(profile_dir) / "job_controller.pstats")
    conn.send("stopped")


class ControllerProcess:
    """The parent's side of serve_controller: what the benchmark reads of the Job controller, fetched on
    request (the main thread only: one request in flight on the pipe at a time)."""

    def __init__(self, ctx: Any, workdir: Path, job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0,
                 gc_threshold2: int | None = None, profile_dir: str | None = None):  # fmt: skip
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve_controller, daemon=True, name="job-controller",
                                   args=(str(workdir), child, job_seconds, seed, gc_threshold2, profile_dir))  # fmt: skip
        self.errors: list[str] = []
        self.gc_pauses: list[tuple[float, float, int]] = []  # the child's, as of the last sync

    def __enter__(self) -> ControllerProcess:
        self.process.start()
        if not self.conn.poll(600) or self.conn.recv() != "ready":  # slow to import when the machine is loaded
            raise SystemExit("the Job controller did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.send("stop")
            if self.conn.poll(30):
                self.conn.recv()
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()

    def sync(self, completed: dict[str, float], ran: dict[str, float]) -> int:
        """Copy the completion times into `completed` and the Jobs' run times into `ran`; the number of Jobs
        the watch missed."""
        self.conn.send("report")
        report = self.conn.recv()
        completed.update(report["completed"])
        ran.update(report["ran"])
        self.gc_pauses = report["gc"]
        self.errors = report["errors"]
        return report["missed_by_watch"]


# ------------------------------------------------------------------ observation


class Follower(Background):
    """A thread that follows one resource's objects by a watch, from the version of a first LIST (listed
    again only if the watch breaks): what the benchmark observes costs the API server per event, not a
    LIST of every object per poll (a LIST of 1000 WarpRuns each second was a large part of the API
    server's CPU in the first 1000-run measurement)."""

    def __init__(self, cluster: Cluster, path: str):
        super().__init__(type(self).__name__)
        self.cluster, self.path = cluster, path

    def on_event(self, kind: str, obj: dict[str, Any], listed: bool) -> None: ...

    def _run(self) -> None:
        api = kubernetes.client.ApiClient(self.cluster.configuration())
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = self.cluster.raw("GET", self.path)
                    for obj in listing["items"]:
                        self.on_event("ADDED", obj, True)
                    rv = listing["metadata"]["resourceVersion"]
                response = api.call_api(self.path, "GET", query_params=[("watch", "true"), ("resourceVersion", rv),
                                                                        ("timeoutSeconds", "1")],
                                        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                                        _preload_content=False, _return_http_data_only=True)  # fmt: skip
                for line in response:  # one event per line
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":  # 410 Gone: list again
                        rv = None
                        break
                    self.on_event(event["type"], event["object"], False)
                    rv = event["object"]["metadata"]["resourceVersion"]
                response.release_conn()
            except Exception as err:  # keep following; a broken watch lists again
                print(f"{type(self).__name__}: {err!r}", file=sys.stderr)
                rv = None
                time.sleep(0.5)


class JobClock(Follower):
    """When each Job was first seen (watch ADDED) and when the controller completed it."""

    def __init__(self, cluster: Cluster):
        super().__init__(cluster, f"/apis/batch/v1/namespaces/{NS}/jobs")
        self.added: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.ran: dict[str, float] = {}  # how long each Job ran: from its start to its completion

    def on_event(self, kind: str, obj: dict[str, Any], listed: bool) -> None:
        name = obj["metadata"]["name"]
        if kind == "ADDED" and name not in self.added:
            self.added[name] = time.monotonic()


class RunPhases(Follower):
    """The phase of every WarpRun, from a watch."""

    def __init__(self, cluster: Cluster):
        super().__init__(cluster, f"/apis/kwarp.dev/v1alpha1/namespaces/{NS}/warpruns")
        self.phases: dict[str, str | None] = {}

    def on_event(self, kind: str, obj: dict[str, Any], listed: bool) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.phases.pop(name, None)
        else:
            self.phases[name] = (obj.get("status") or {}).get("phase")


# ------------------------------------------------------------------ the pods


def pod_seconds(bounds: tuple[float, float], seed: int, name: str) -> float:
    """How long the pod of Job `name` runs: uniform in `bounds`, drawn from the seed and the name alone."""
    lo, hi = bounds
    return random.Random(f"{seed}:{name}").uniform(lo, hi) if hi > 0 else 0.0


class Pods:
    """The pods of started Jobs: each Job's work (`finish`: write its outputs, mark it Complete) runs on
    one of `n` threads, as pods run side by side in a cluster.

    With `job_seconds` (lo, hi) other than (0, 0), each Job's pod first "runs" for a duration drawn
    uniformly from [lo, hi] s (`pod_seconds`: from `seed` and the Job's name, so the same Job runs as long
    in every invocation, whatever order the Jobs start in): the Job waits in a heap that one timer thread
    empties as the durations end, so a thousand sleeping pods cost one sleeping thread, not a thread each."""

    def __init__(self, finish: Callable[[dict[str, Any]], None], n: int = 4,
                 job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0):  # fmt: skip
        self.finish, self.job_seconds, self.seed = finish, job_seconds, seed
        self.stopping = threading.Event()
        self._ready: queue.Queue[dict[str, Any] | None] = queue.Queue()  # Jobs whose pod's run has ended
        self._running: list[tuple[float, int, dict[str, Any]]] = []  # (when the pod's run ends, tie-break, Job)
        self._changed = threading.Condition()
        self._seq = 0
        self.threads = [threading.Thread(target=self._pod, daemon=True, name=f"pod-{i}") for i in range(n)]
        if job_seconds[1] > 0:
            self.threads.append(threading.Thread(target=self._timer, daemon=True, name="pod-timer"))

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for _ in self.threads:
            self._ready.put(None)
        with self._changed:
            self._changed.notify()
        for thread in self.threads:
            thread.join(5)

    def start(self, job: dict[str, Any]) -> None:
        seconds = pod_seconds(self.job_seconds, self.seed, job["metadata"]["name"])
        if seconds <= 0:
            self._ready.put(job)
            return
        with self._changed:
            self._seq += 1
            heapq.heappush(self._running, (time.monotonic() + seconds, self._seq, job))
            self._changed.notify()  # it may end before the one the timer waits for

    def _timer(self) -> None:
        """Hand each Job to the pod threads when its pod's run ends; sleeps until the next end."""
        with self._changed:
            while not self.stopping.is_set():
                now = time.monotonic()
                while self._running and self._running[0][0] <= now:
                    self._ready.put(heapq.heappop(self._running)[2])
                self._changed.wait(self._running[0][0] - now if self._running else 1.0)

    def _pod(self) -> None:
        while (job := self._ready.get()) is not None:
            self.finish(job)


class TimedRunner(StatusJobRunner):
    """The Job controller and the pods: the Job controller handles Jobs on `workers` threads, and a started
    Job's pod (`Pods`) writes the task's outputs into the store, then the Job is marked Complete. (One
    thread doing both was the benchmark's bottleneck: busy 96% of the time, a third of it writing outputs.)"""

    def __init__(self, cluster: Cluster, completed: dict[str, float], ran: dict[str, float], pods: int = 4,
                 workers: int = 4, job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0):  # fmt: skip
        super().__init__(cluster, outcome=self._work, workers=workers)
        self.completed = completed  # Job name -> when its Complete status patch was acknowledged
        self.ran = ran  # Job name -> seconds from its start (pod created, status running) to that
        self._started: dict[str, float] = {}
        self.pods = Pods(self._complete, pods, job_seconds, seed)

    def __enter__(self) -> TimedRunner:
        self.pods.__enter__()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.pods.__exit__(*exc)

    def _work(self, job: dict[str, Any]) -> None:
        if LABEL_RUN in job["metadata"].get("labels", {}):  # the API floor's bare Jobs: nothing to do
            self._started[job["metadata"]["name"]] = time.monotonic()
            self.pods.start(job)
        return None

    def _complete(self, job: dict[str, Any]) -> None:
        try:
            write_outputs(job)
            name = job["metadata"]["name"]
            self.succeed(name)
            self.completed[name] = time.monotonic()
            self.ran[name] = self.completed[name] - self._started[name]
        except Exception as err:  # reported at the end, as the runner's own errors are
            self.errors.append(err)
