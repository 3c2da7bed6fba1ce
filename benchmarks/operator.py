"""Benchmark the operator against the API server emulator: how fast it reacts, how many reconciles it does.

    python benchmarks/operator.py [--runs 100] [--iterations 2] [--members 2] [--job-seconds LO:HI] [--out FILE]

The API server (tests/kube.py's emulator) runs in a child process, as a real one would, and so does the
test Job controller with its pod threads (as kube-controller-manager and the kubelets are processes of
their own in a cluster; `--controller-in-process` runs it in this process, beside the operator, as
before); the operator (kopf, `kwarp.operator.app.serve`) runs in this process. Every Job is "run" by
the controller (at once, or after its pod's duration: below): it writes the task's outputs into a file://
store (tiny checkpoints with manifests, eval.json) and marks the Job Complete through its status
subresource. The operator's resync timer is set beyond the scenario's end, so all progress is driven by
watch events.

Two scenarios, measured in the same invocation:

- baseline: 1 WarpRun in flight;
- load:     --runs WarpRuns created at once.

How long a Job runs (`--job-seconds LO:HI`, `--seed`):

- instant (0:0, the default): every Job completes the instant it starts. The runs then form a closed,
  saturated loop: each completion at once offers the next Job, so at 1000 runs the rate is bounded by the
  machine's cores (30-37 Jobs/s and 44-52 passes/s on the project's 2 cores) and the reaction time measured
  is the backlog divided by that rate, a queue in front of whichever component is slowest, not the
  operator's reaction to one completion.
- paced (60:120, the scenario of issue 17's goal): each Job's pod "runs" for a duration drawn uniformly from
  [LO, HI] s (from the seed and the Job's name: the same Job runs as long in every invocation) before the
  stand-in writes its outputs and marks it Complete; the runs are still created at once. A WARP trainer Job
  lasts minutes to hours, so 60-120 s for every Job kind is a short lower bound. At 1000 runs it offers
  ~9000 Jobs over >= ~7 stages x 90 s (prepare, then members, merge and evaluation per iteration), i.e.
  <= ~15 Jobs/s, about half what the instant scenario measured at 1000 runs (30-37 Jobs/s): the operator
  is loaded but not saturated. The sleeping pods wait in one heap emptied by one timer thread (no thread
  per pod, no CPU while they wait), and the Job controller's CPU is printed as for the instant scenario.
  The offered Job completions per 10 s window (the most and the mean) are printed, so the load is seen.

The goal (issue 17): reaction p99 < 250 ms at 100 and at 1000 runs in the paced scenario; each scenario
prints whether its p99 meets it (the instant scenario is reported beside it as it is).

Figures (printed, never asserted):

- reaction latency: from a Job's completion (its status patch acknowledged) to the creation of the
  Job it unblocked (first seen on a watch of Jobs), p50 / p99 / max, over every dependency edge
  (members -> merge, merge -> eval and next members); for scale, the API floor: create a Job ->
  ADDED on the same watch;
- reconcile rate: reconciles per second while the runs are in flight, and the mean and p99 reconcile
  duration (from the operator's own histogram, scraped from /metrics); reconciles per created Job;
- wall time until every run Succeeded;
- API requests per created Job, by client (each with a bearer token of its own: the operator, kopf's own
  requests included; the Job controller; the benchmark's runs and watches), then by verb and resource,
  as the API server counted them: where the API server's work comes from;
- CPU time of each component while the runs are in flight: the API server (its process), the Job
  controller with its pods (its process; with --controller-in-process, its threads), the benchmark's
  watches of Jobs and WarpRuns (their threads), and the operator (the rest of this process: kopf's loop
  and the reconcile threads); CPU per created Job for each;
- with --profile, where the operator's time goes: a sampling profiler over the operator's threads
  (every 5 ms, inclusive samples per function, the top 20 printed).

Progress (runs Succeeded, Jobs created, elapsed) is printed to stderr every 10 s. The operator's resync
timer is 600 s (paced: 3600 s): the runs are created together, so their timers would fire in the same
second, a burst of passes that is not the reaction to a completion.

The machine is shared by the API server, the operator, the Job controller and the store (a local
folder): figures are a lower bound for an operator with an API server and MinIO of its own.
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import os
import queue
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402

from benchmarks.operator_trace import Tracer  # noqa: E402
from kwarp.core.crd import crd  # noqa: E402
from kwarp.core.plan import Task, dependencies  # noqa: E402
from kwarp.core.spec import parse  # noqa: E402
from kwarp.operator.app import OperatorOptions  # noqa: E402
from kwarp.operator.jobs import LABEL_RUN, WorkerSettings  # noqa: E402
from tests.kube import Cluster, RunningOperator, StatusJobRunner, wait_for  # noqa: E402
from tests.operator_harness import options, warprun, write_outputs  # noqa: E402

NS = "default"
# Issue 17's goal for the operator's reaction (a Job's completion to the creation of the Job it unblocked).
GOAL_P99 = 0.250
# The clients' bearer tokens: the API server counts each one's requests apart.
OPERATOR, CONTROLLER, BENCHMARK = "operator", "job-controller", "benchmark"


# ------------------------------------------------------------------ the API server, in a child process


def serve_api(workdir: str, ready: Any, stop: Any, conn: Any) -> None:
    """The API server; answers each request on `conn` with the requests it has served so far, by client
    (bearer token), group, resource and verb (tests/kube_server.py `calls_by`)."""
    sys.path.insert(0, str(ROOT))
    with Cluster(Path(workdir), crds=[crd()]) as cluster:
        ready.set()
        while not stop.is_set():
            if conn.poll(0.5):
                conn.recv()
                assert cluster.server is not None
                while True:
                    try:  # the server's loop thread counts on while this copies
                        conn.send(dict(cluster.server.calls_by))
                        break
                    except RuntimeError:
                        continue


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


def requests_per_job(before: dict[tuple[str, ...], int], after: dict[tuple[str, ...], int], jobs: int) -> dict[str, Any]:
    """The requests served between two counts, per created Job: by client, then 'verb resource'."""
    out: dict[str, dict[str, float]] = {}
    for key, n in after.items():
        token, group, resource, verb = key
        d = n - before.get(key, 0)
        if d:
            out.setdefault(token, {})[f"{verb} {resource}" + (f".{group}" if group else "")] = d / jobs
    figures: dict[str, Any] = {}
    for token, kinds in sorted(out.items()):
        figures[token] = {"total": round(sum(kinds.values()), 2),
                          **{k: round(v, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}}  # fmt: skip
    figures["all_clients"] = round(sum(f["total"] for f in figures.values()), 2)
    return figures


# ------------------------------------------------------------------ the Job controller, in a child process


def serve_controller(workdir: str, conn: Any, job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> None:
    """The Job controller and its pods in a process of their own, talking to the API server over HTTP as
    in this process: in a cluster the Job controller is kube-controller-manager, not a thread beside the
    operator, and one GIL shared with kopf's event loop delayed the operator's Job events (issue 17).
    Answers each request on `conn` with what the benchmark reads of it: the completion times (monotonic
    clock: one clock for every process on the machine), the Jobs its watch missed, its errors."""
    sys.path.insert(0, str(ROOT))
    cluster = Client(Path(workdir), CONTROLLER)  # the client side only
    with TimedRunner(cluster, {}, {}, job_seconds=job_seconds, seed=seed) as runner:
        conn.send("ready")
        while conn.recv() != "stop":
            conn.send({"completed": dict(runner.completed), "ran": dict(runner.ran),
                       "missed_by_watch": runner.missed_by_watch(),
                       "errors": [repr(err) for err in runner.errors]})  # fmt: skip
    conn.send("stopped")


class ControllerProcess:
    """The parent's side of serve_controller: what the benchmark reads of the Job controller, fetched on
    request (the main thread only: one request in flight on the pipe at a time)."""

    def __init__(self, ctx: Any, workdir: Path, job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve_controller, args=(str(workdir), child, job_seconds, seed),
                                   daemon=True, name="job-controller")  # fmt: skip
        self.errors: list[str] = []

    def __enter__(self) -> ControllerProcess:
        self.process.start()
        if not self.conn.poll(600) or self.conn.recv() != "ready":  # it imports torch: minutes when loaded
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
        self.errors = report["errors"]
        return report["missed_by_watch"]


# ------------------------------------------------------------------ observation


class Follower:
    """A thread that follows one resource's objects by a watch, from the version of a first LIST (listed
    again only if the watch breaks): what the benchmark observes costs the API server per event, not a
    LIST of every object per poll (a LIST of 1000 WarpRuns each second was a large part of the API
    server's CPU in the first 1000-run measurement)."""

    def __init__(self, cluster: Cluster, path: str):
        self.cluster, self.path = cluster, path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=type(self).__name__)

    def __enter__(self) -> Follower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def on_event(self, kind: str, obj: dict[str, Any], listed: bool) -> None: ...

    def _watch(self) -> None:
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


def pod_seconds(bounds: tuple[float, float], seed: int, name: str) -> float:
    """How long the pod of Job `name` runs: uniform in `bounds`, drawn from the seed and the name alone."""
    lo, hi = bounds
    return random.Random(f"{seed}:{name}").uniform(lo, hi) if hi > 0 else 0.0


class TimedRunner(StatusJobRunner):
    """The Job controller and the pods: a started Job's work (writing the task's outputs into the store,
    then Complete) runs on one of `pods` threads, as pods run side by side in a cluster, and the Job
    controller handles Jobs on `workers` threads. (One thread doing both was the benchmark's bottleneck:
    busy 96% of the time, a third of it writing outputs.)

    With `job_seconds` (lo, hi) other than (0, 0), each Job's pod first "runs" for a duration drawn
    uniformly from [lo, hi] s (from `seed` and the Job's name, so the same Job runs as long in every
    invocation, whatever order the Jobs start in): the Job waits in a heap that one timer thread empties
    as the durations end, so a thousand sleeping pods cost one sleeping thread, not a thread each."""

    def __init__(self, cluster: Cluster, completed: dict[str, float], ran: dict[str, float], pods: int = 4,
                 workers: int = 4, job_seconds: tuple[float, float] = (0.0, 0.0), seed: int = 0):  # fmt: skip
        super().__init__(cluster, outcome=self._work, workers=workers)
        self.completed = completed  # Job name -> when its Complete status patch was acknowledged
        self.ran = ran  # Job name -> seconds from its start (pod created, status running) to that
        self._started: dict[str, float] = {}
        self.job_seconds, self.seed = job_seconds, seed
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._running: list[tuple[float, int, dict[str, Any]]] = []  # (when the pod's run ends, tie-break, Job)
        self._wake = threading.Condition()
        self._seq = 0
        self.pods = [threading.Thread(target=self._pod, daemon=True, name=f"pod-{i}") for i in range(pods)]
        if job_seconds[1] > 0:
            self.pods.append(threading.Thread(target=self._timer, daemon=True, name="pod-timer"))

    def __enter__(self) -> TimedRunner:
        for thread in self.pods:
            thread.start()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for _ in self.pods:
            self._queue.put(None)
        with self._wake:
            self._wake.notify()
        for thread in self.pods:
            thread.join(5)

    def _work(self, job: dict[str, Any]) -> None:
        if LABEL_RUN not in job["metadata"].get("labels", {}):  # the API floor's bare Jobs: nothing to do
            return None
        self._started[job["metadata"]["name"]] = time.monotonic()
        seconds = pod_seconds(self.job_seconds, self.seed, job["metadata"]["name"])
        if seconds <= 0:
            self._queue.put(job)
            return None
        with self._wake:
            self._seq += 1
            heapq.heappush(self._running, (time.monotonic() + seconds, self._seq, job))
            self._wake.notify()  # it may end before the one the timer waits for
        return None

    def _timer(self) -> None:
        """Hand each paced Job to the pod threads when its run ends; sleeps until the next end."""
        with self._wake:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._running and self._running[0][0] <= now:
                    self._queue.put(heapq.heappop(self._running)[2])
                self._wake.wait(self._running[0][0] - now if self._running else 1.0)

    def _pod(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                write_outputs(job)
                name = job["metadata"]["name"]
                self.succeed(name)
                self.completed[name] = time.monotonic()
                self.ran[name] = self.completed[name] - self._started[name]
            except Exception as err:  # reported at the end, as the runner's own errors are
                self.errors.append(err)


def by_run(names: Any, runs: list[str]) -> dict[str, list[str]]:
    """Job names grouped by the run they belong to (<run>-<task>): one pass over the Jobs, not one per run
    (that was a minute of CPU at 1000 runs x 9000 Jobs)."""
    wanted, out = set(runs), {}
    for name in list(names):
        parts = name.split("-")
        run = next((r for k in range(1, len(parts)) if (r := "-".join(parts[:k])) in wanted), None)
        if run is not None:
            out.setdefault(run, []).append(name)
    return out


def reaction_edges(clock: JobClock, runs: list[str], spec_doc: dict[str, Any]) -> list[tuple[str, str, str, float, float]]:
    """For every Job but `prepare`: (run, the last Job it waited for, the Job, that one's completion, its creation)."""
    spec = parse(spec_doc).spec
    out = []
    for run, names in by_run(clock.added, runs).items():
        for name in names:
            task = Task.parse_id(re.sub(r"-r\d+$", "", name[len(run) + 1 :]))
            deps = [d.job_name(run) for d in dependencies(spec, task)]
            if deps and all(d in clock.completed for d in deps):
                last = max(deps, key=lambda d: clock.completed[d])
                out.append((run, last, name, clock.completed[last], clock.added[name]))
    return out


def reaction_latencies(clock: JobClock, runs: list[str], spec_doc: dict[str, Any]) -> list[float]:
    """For every Job but `prepare`: its creation minus the completion of the last Job it waited for."""
    return [seen - completed for _, _, _, completed, seen in reaction_edges(clock, runs, spec_doc)]


def api_floor(cluster: Cluster, clock: JobClock, n: int = 50) -> list[float]:
    """Create bare Jobs and time their ADDED events on the same watch: what the API itself costs."""
    batch = kubernetes.client.BatchV1Api(cluster.client())
    out = []
    for i in range(n):
        name = f"floor-{i}"
        manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"bench": "floor"}},
                    "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                   "containers": [{"name": "c", "image": "none"}]}}}}  # fmt: skip
        t0 = time.monotonic()
        batch.create_namespaced_job(NS, manifest)
        wait_for(lambda n=name: n in clock.added, 10, interval=0.001, message=name)
        out.append(clock.added[name] - t0)
    return out


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kwarp_operator_reconcile_duration_seconds"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def histogram_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of the reconciles between two scrapes."""
    buckets = []
    for key, value in after.items():
        if "_bucket{" in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return None


def offered_completions(completed: dict[str, float], runs: list[str], t0: float, window: float = 10.0) -> dict[str, Any]:
    """The Job completions the operator was offered, per `window` s from the runs' creation (t0) to the last
    completion: the most in one window and the mean, in Jobs per second; how loaded the operator was."""
    times = [completed[name] for names in by_run(completed, runs).values() for name in names]
    if not times:
        return {}
    counts = [0] * (int((max(times) - t0) // window) + 1)
    for t in times:
        counts[int((t - t0) // window)] += 1
    return {"window_s": window, "max_per_s": round(max(counts) / window, 1),
            "mean_per_s": round(len(times) / (len(counts) * window), 1)}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


# ------------------------------------------------------------------ CPU time per component


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(path: str) -> float:
    """utime + stime (seconds) from a /proc/.../stat file."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(thread: threading.Thread | None) -> float:
    return proc_cpu(f"/proc/self/task/{thread.native_id}/stat") if thread is not None and thread.native_id else 0.0


class Components:
    """CPU seconds of the API server (child process), the Job controller with its pods (child process, or
    threads of this one with --controller-in-process), the benchmark's watches of Jobs and WarpRuns
    (threads) and the operator (this process minus those threads and the main thread, which only polls)."""

    def __init__(self, server_pid: int, runner: TimedRunner | ControllerProcess, clock: JobClock, phases: RunPhases,
                 api: Any = None):  # fmt: skip
        self.server_pid, self.runner, self.clock, self.phases = server_pid, runner, clock, phases
        self.api = api  # the API server's end of the pipe to serve_api

    def requests(self) -> dict[tuple[str, ...], int]:
        """The requests the API server has served so far, by (client, group, resource, verb); main thread only."""
        self.api.send("calls")
        return self.api.recv()

    def missed_by_watch(self) -> int:
        """The Jobs the controller's watch missed (found by a LIST); in the child's case, also brings its
        completion times into the clock."""
        if isinstance(self.runner, ControllerProcess):
            return self.runner.sync(self.clock.completed, self.clock.ran)
        return self.runner.missed_by_watch()

    def errors(self) -> list[Any]:
        return self.runner.errors

    def read(self) -> dict[str, float]:
        process = proc_cpu("/proc/self/stat")
        if isinstance(self.runner, ControllerProcess):  # its own process: none of this one's CPU
            return {"api_server": proc_cpu(f"/proc/{self.server_pid}/stat"),
                    "job_controller": proc_cpu(f"/proc/{self.runner.process.pid}/stat"),
                    "watches": (clock := thread_cpu(self.clock._thread) + thread_cpu(self.phases._thread)),
                    "operator": process - clock - thread_cpu(threading.main_thread())}  # fmt: skip
        runner = thread_cpu(self.runner._thread) + sum(thread_cpu(t) for t in [*self.runner.pods, *self.runner.worker_threads])
        clock = thread_cpu(self.clock._thread) + thread_cpu(self.phases._thread)
        main = thread_cpu(threading.main_thread())
        return {"api_server": proc_cpu(f"/proc/{self.server_pid}/stat"), "job_controller": runner,
                "watches": clock, "operator": process - runner - clock - main}  # fmt: skip


class Sampler:
    """A sampling profiler of the operator's threads: every `interval` s, each thread's stack; a function
    is counted once per sample it is on the stack of (inclusive)."""

    def __init__(self, exclude: set[int], interval: float = 0.005, only: int | None = None):
        self.exclude, self.interval, self.only = exclude, interval, only  # only: that thread alone
        self.inclusive: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def __enter__(self) -> Sampler:
        self.exclude |= {threading.get_ident()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            for ident, frame in sys._current_frames().items():
                if ident in self.exclude or ident == me or (self.only is not None and ident != self.only):
                    continue
                seen: set[str] = set()
                f = frame
                while f is not None:
                    code = f.f_code
                    key = f"{Path(code.co_filename).name}:{code.co_name}"
                    if key not in seen and not code.co_filename.endswith(("threading.py", "selectors.py")):
                        seen.add(key)
                        self.inclusive[key] = self.inclusive.get(key, 0) + 1
                    f = f.f_back
                self.samples += 1

    def top(self, n: int = 20) -> list[tuple[str, float]]:
        total = max(self.samples, 1)
        return [(k, round(100 * v / total, 1)) for k, v in sorted(self.inclusive.items(), key=lambda kv: -kv[1])[:n]]


# ------------------------------------------------------------------ one scenario


def scenario(cluster: Cluster, store: Path, port: int, clock: JobClock, n_runs: int, prefix: str,
             iterations: int, members: int, cpu: Components, tracer: Tracer | None = None,
             job_seconds: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:  # fmt: skip
    spec_patch = {"warp": {"iterations": iterations, "policies": members, "steps": 3}}
    runs = [f"{prefix}-{i:03d}" for i in range(n_runs)]
    custom = kubernetes.client.CustomObjectsApi(cluster.client())
    if tracer is not None:
        tracer.reset()
    loop = next((t for t in threading.enumerate() if t.name == "kwarp-operator"), None)  # kopf's event loop
    before = scrape(port)
    cpu0 = cpu.read()
    requests0 = cpu.requests()
    loop0 = thread_cpu(loop)
    t0 = time.monotonic()
    for run in runs:
        custom.create_namespaced_custom_object("kwarp.dev", "v1alpha1", NS, "warpruns", warprun(store, run, **spec_patch))

    names = set(runs)
    shown = [t0]

    def all_succeeded() -> bool:
        phases = [p for name, p in list(cpu.phases.phases.items()) if name in names]
        succeeded = sum(p == "Succeeded" for p in phases)
        if time.monotonic() - shown[0] >= 10:  # progress, so a long benchmark is seen to move
            shown[0] = time.monotonic()
            jobs = sum(1 for name in list(clock.added) if name.startswith(f"{prefix}-"))
            used = cpu.read()
            missed = cpu.missed_by_watch()  # from a child controller, also its completion times so far
            recent = sum(1 for t in list(clock.completed.values()) if t >= shown[0] - 10)
            print(f"[{prefix}] {time.monotonic() - t0:6.0f} s: {succeeded}/{n_runs} runs Succeeded, {jobs} Jobs, "
                  f"{recent} completed in the last 10 s "
                  f"(missed by the Job controller's watch, found by a LIST: {missed}); load "
                  f"{os.getloadavg()[0]:.1f}; CPU s " + ", ".join(f"{k} {used[k] - cpu0[k]:.1f}" for k in used), file=sys.stderr, flush=True)
        return len(phases) == n_runs and succeeded == n_runs

    stages = 1 + 3 * iterations  # prepare, then members, merge, evaluation per iteration: one after the other
    wait_for(all_succeeded, 60 + 5 * n_runs + 2 * stages * job_seconds[1], interval=1.0,
             message=f"{n_runs} runs Succeeded")
    wall = time.monotonic() - t0
    cpu1 = cpu.read()
    requests1 = cpu.requests()
    missed = cpu.missed_by_watch()  # and, from a child controller, every completion time so far
    after = scrape(port)
    count = after["kwarp_operator_reconcile_duration_seconds_count"] - before.get("kwarp_operator_reconcile_duration_seconds_count", 0)
    total = after["kwarp_operator_reconcile_duration_seconds_sum"] - before.get("kwarp_operator_reconcile_duration_seconds_sum", 0)
    jobs = sum(len(names) for names in by_run(clock.added, runs).values())
    edges = reaction_edges(clock, runs, warprun(store, runs[0], **spec_patch))
    latencies = [seen - completed for _, _, _, completed, seen in edges]
    offered = offered_completions(clock.completed, runs, t0)
    ran = [clock.ran[name] for names in by_run(clock.ran, runs).values() for name in names]
    succeeded = sum(cpu.phases.phases.get(run) == "Succeeded" for run in runs)
    p99 = pct(latencies, 0.99)
    print(f"[{prefix}] Job completions offered per {offered.get('window_s')} s window: max "
          f"{offered.get('max_per_s')}/s, mean {offered.get('mean_per_s')}/s; reaction p99 {1000 * p99:.0f} ms: "
          f"{'meets' if p99 < GOAL_P99 else 'does NOT meet'} the goal (< {1000 * GOAL_P99:.0f} ms)",
          file=sys.stderr, flush=True)  # fmt: skip
    loop_cpu = thread_cpu(loop) - loop0
    requests = requests_per_job(requests0, requests1, jobs)
    for client in (OPERATOR, CONTROLLER, BENCHMARK):  # where the API server's work comes from, readable
        kinds = requests.get(client, {})
        print(f"[{prefix}] API requests per Job, {client}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    traced = {} if tracer is None else {"trace": {"kopf_loop_cpu_ms_per_job": round(1000 * loop_cpu / max(jobs, 1), 1),
                                                  "per_reconcile": tracer.per_reconcile(names),
                                                  "kopf": tracer.kopf_overhead(), "reaction": tracer.breakdown(edges)}}
    return {
        "runs": n_runs,
        "jobs": jobs,
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 1),
        "reconciles": int(count),
        "reconciles_per_s": round(count / wall, 1),
        "reconciles_per_job": round(count / jobs, 2),
        "reconcile_mean_ms": round(1000 * total / count, 1),
        "reconcile_p99_bucket_ms": (q * 1000 if (q := histogram_quantile(before, after, 0.99)) is not None else None),
        "reaction_p50_ms": round(1000 * statistics.median(latencies), 1),
        "reaction_p99_ms": round(1000 * p99, 1),
        "reaction_max_ms": round(1000 * max(latencies), 1),
        "edges": len(latencies),
        "runs_succeeded": succeeded,
        "job_run_seconds": {"jobs": len(ran), "min": round(min(ran, default=0), 2),
                            "mean": round(statistics.mean(ran or [0]), 2), "max": round(max(ran, default=0), 2)},
        "goal_reaction_p99_below_ms": 1000 * GOAL_P99,
        "goal_met": p99 < GOAL_P99,
        "job_completions_offered": offered,
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 1) for k in cpu1},
        "cpu_ms_per_job": {k: round(1000 * (cpu1[k] - cpu0[k]) / jobs, 1) for k in cpu1},
        # Watches count once per watch request (kopf's last server_timeout, the benchmark's 1 s), not per event.
        "api_requests_per_job": requests,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "jobs_missed_by_the_job_controllers_watch": missed,
        **traced,
    }


def job_seconds_arg(text: str) -> tuple[float, float]:
    """--job-seconds LO:HI, 0 <= LO <= HI."""
    lo, sep, hi = text.partition(":")
    try:
        bounds = (float(lo), float(hi if sep else lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LO:HI in seconds, e.g. 60:120") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LO <= HI")
    return bounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--profile", action="store_true", help="sample the operator's threads (load scenario)")
    parser.add_argument("--profile-loop", action="store_true",
                        help="sample kopf's event-loop thread alone (load scenario): what delays a Job event's handler")
    parser.add_argument("--skip-baseline", action="store_true", help="only the load scenario")
    parser.add_argument("--workers", type=int, default=OperatorOptions().max_workers,
                        help="the operator's reconcile threads (OperatorOptions.max_workers)")
    parser.add_argument("--controller-in-process", action="store_true",
                        help="run the Job controller and its pods as threads of this process, beside the operator "
                             "(one GIL), not in a child process of their own (the default, as in a cluster)")
    parser.add_argument("--job-seconds", type=job_seconds_arg, default=(0.0, 0.0), metavar="LO:HI",
                        help="each Job's pod runs for a duration drawn uniformly from [LO, HI] s before it completes "
                             "(the paced scenario: 60:120); 0:0, the default, completes every Job the instant it starts")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the Jobs' durations (--job-seconds)")
    parser.add_argument("--trace", action="store_true",
                        help="break each reaction and reconcile down (API calls, store, kopf's queues): operator_trace.py")
    args = parser.parse_args()
    paced = args.job_seconds[1] > 0
    lo, hi = args.job_seconds
    print("[setup] scenario: " + (f"paced, each Job's pod runs {lo:g}-{hi:g} s (uniform, seed {args.seed})" if paced
                                  else "instant, every Job completes the instant it starts"), file=sys.stderr, flush=True)  # fmt: skip

    import logging

    logging.basicConfig(level=logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="kwarp-bench-operator-"))
    store = workdir / "store"
    store.mkdir()
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    api_conn, api_child = ctx.Pipe()
    server = ctx.Process(target=serve_api, args=(str(workdir / "api"), ready, stop, api_child), daemon=True)
    server.start()
    try:
        if not ready.wait(600):  # the child imports torch (tests.test_operator): minutes on a loaded machine
            raise SystemExit("the API server did not start")
        cluster = Client(workdir / "api", BENCHMARK)  # the client side only: the child process serves it
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # The resync timer beyond the scenario's end (600 s; paced: an hour), so that watch events alone drive
        # progress: the runs are created together, so their timers would all fire in the same second.
        opts = options(metrics_port=port, bind_address="127.0.0.1", worker=WorkerSettings(image="kwarp-worker:bench"),
                       max_workers=args.workers, resync_seconds=3600 if paced else 600)  # fmt: skip
        tracer = Tracer() if args.trace else None
        if tracer is not None:
            tracer.install()  # before the operator starts: it wraps what the operator builds
        with JobClock(cluster) as clock, RunPhases(cluster) as phases, \
                (TimedRunner(Client(workdir / "api", CONTROLLER), clock.completed, clock.ran, job_seconds=args.job_seconds,
                             seed=args.seed) if args.controller_in_process
                 else ControllerProcess(ctx, workdir / "api", args.job_seconds, args.seed)) as runner, \
                RunningOperator(cluster, opts, configuration=Client(workdir / "api", OPERATOR).configuration):
            cpu = Components(server.pid, runner, clock, phases, api_conn)
            floor = api_floor(cluster, clock)
            baseline = None if args.skip_baseline else scenario(
                cluster, store, port, clock, 1, "solo", args.iterations, args.members, cpu, tracer, args.job_seconds)
            exclude = {t.ident for t in (threading.main_thread(), clock._thread, phases._thread) if t is not None}
            if isinstance(runner, TimedRunner):
                exclude |= {t.ident for t in (runner._thread, *runner.pods, *runner.worker_threads) if t is not None}
            if args.profile or args.profile_loop:
                loop = next(t.ident for t in threading.enumerate() if t.name == "kwarp-operator")
                with Sampler(exclude, only=loop if args.profile_loop else None) as sampler:
                    load = scenario(cluster, store, port, clock, args.runs, "load", args.iterations, args.members,
                                    cpu, tracer, args.job_seconds)
                load["profile_operator_inclusive_pct" if args.profile else "profile_kopf_loop_inclusive_pct"] = dict(
                    sampler.top(40 if args.profile_loop else 20))
            else:
                load = scenario(cluster, store, port, clock, args.runs, "load", args.iterations, args.members, cpu,
                                tracer, args.job_seconds)
            cpu.missed_by_watch()  # the child's errors, as of now
            if cpu.errors():
                raise SystemExit(f"the Job controller failed: {cpu.errors()[:3]}")
            # Written before the operator is stopped: stopping it can take longer than RunningOperator
            # waits with 1000 runs on a loaded machine, and that must not lose the figures.
            figures = {
                "machine": {"cpus": os.cpu_count()},
                "operator_reconcile_threads": args.workers,
                "job_controller": "in this process" if args.controller_in_process else "a child process",
                "scenario": {"name": "paced" if paced else "instant", "job_seconds": list(args.job_seconds),
                             "seed": args.seed},
                "api_floor_create_to_watch_ms": {"p50": round(1000 * statistics.median(floor), 2),
                                                 "p99": round(1000 * pct(floor, 0.99), 2)},  # fmt: skip
                "load_average": os.getloadavg(),
                "baseline_1_run": baseline,
                f"load_{args.runs}_runs": load,
            }
            if baseline is not None:
                figures["ratios_load_over_baseline"] = {
                    "reaction_p50": round(load["reaction_p50_ms"] / baseline["reaction_p50_ms"], 2),
                    "reaction_p99": round(load["reaction_p99_ms"] / baseline["reaction_p99_ms"], 2),
                    "reconcile_mean": round(load["reconcile_mean_ms"] / baseline["reconcile_mean_ms"], 2),
                    "reconciles_per_s": round(load["reconciles_per_s"] / baseline["reconciles_per_s"], 2),
                }
            print(json.dumps(figures, indent=2), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(figures, indent=2))
    finally:
        stop.set()
        server.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
