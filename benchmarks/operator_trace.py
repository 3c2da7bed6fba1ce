"""What a reaction of the operator is made of: the benchmark's tracer (`benchmarks/operator.py --trace`).

Installed in the benchmark's process before the operator starts, it wraps (class attributes, this
process only; the shipped code carries no tracing):

- kopf's handler executor: when each handler call was submitted and when a thread took it;
- `JobIndex.event`: when each Job event was handled (the first thing the informer's sink, `job_seen` in
  operator/handlers.py, does once it has the Job's run; kopf's `job_changed` handler before the operator had
  an informer of its own, in kopf's loop);
- `Reconciler.request` / `Reconciler.reconcile`: each request (urgent or not) and each pass of a run,
  its wall and thread CPU time;
- `Kube._call`: every API call the reconciler makes (verb, resource, seconds, the Job a POST creates);
- the store's public methods (outermost call only): count and seconds per method;
- kopf's own API requests (watch streams excluded) and the Events the reconciler posts.

`breakdown(...)` then splits each reaction edge (a Job's completion -> the creation of the Job it
unblocked) into consecutive segments:

    deliver        completion acknowledged -> the Job event is handled (the API server's watch and the
                   operator's informer thread; before it, kopf's loop submitting its handler)
    thread_wait    submitted -> a handler thread takes it (kopf's executor; 0 for a coroutine handler and
                   for the informer's sink)
    queued         handler runs -> the pass that creates the next Job starts (waiting for a reconcile
                   thread, or for the run's pass in progress; all of completion -> pass start when that
                   pass began before the completion's event was handled: it saw the outputs in the store)
    before_create  that pass's work before its POST (GET of the run, store observations, ...)
    create         the POST of the new Job
    visible        POST answered -> the benchmark's watch sees the Job (ADDED)
"""

from __future__ import annotations

import concurrent.futures
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

STORE_METHODS = ("has_checkpoint", "read_manifest", "get_bytes", "get_versioned", "get_json", "exists", "list",
                 "folders", "put_bytes", "put_json", "put_if")  # fmt: skip


@dataclass
class Pass:
    """A reconcile pass while it runs; `record()` when it ends."""

    run: str
    start: float
    end: float = 0.0
    cpu: float = 0.0
    calls: list[tuple[str, float, float, str | None]] = field(default_factory=list)  # (kind, start, seconds, job)
    store: list[tuple[str, float, float]] = field(default_factory=list)  # (method, start, seconds)

    def record(self) -> PassRecord:
        return PassRecord(self.run, self.start, self.end, self.cpu, tuple(self.calls), tuple(self.store))


class PassRecord(NamedTuple):
    """A finished pass, as kept: its calls in tuples of strings and numbers only. CPython's collector stops
    tracking such (exact) tuples once they survive a collection, so what a 1000-run scenario records (the
    calls and store calls of ~18,000 passes, the Job events) is not walked by every later collection of the
    operator's process, as lists are: one tracked object per pass (this named tuple) instead of three and
    more. (At 100 runs the lists added ~12,000 tracked objects to that process, these ~400.)"""

    run: str
    start: float
    end: float
    cpu: float
    calls: tuple[tuple[str, float, float, str | None], ...]
    store: tuple[tuple[str, float, float], ...]


class HandlerCall(NamedTuple):
    submitted: float
    started: float


def resource_of(method: str, path: str) -> str:
    """'GET warprun', 'PATCH warprun/status', 'POST job', ... from a request path."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2 :]
    else:
        rest = parts[2:] if parts[0] == "apis" else parts[1:]
    kind = rest[0] if rest else "?"
    kind = {"warpruns": "warprun", "jobs": "job", "pods": "pod", "events": "event", "services": "service",
            "secrets": "secret"}.get(kind, kind)  # fmt: skip
    named = len(rest) >= 2
    sub = f"/{rest[2]}" if len(rest) >= 3 else ""
    verb = "LIST" if method == "GET" and not named else method
    return f"{verb} {kind}{sub}"


class Tracer:
    def __init__(self) -> None:
        self.passes: list[PassRecord] = []
        self.requests: list[tuple[str, float, bool]] = []  # (run, at, urgent)
        # Job name -> its events' (finished, handler call, handled at): a tuple, not a list, so not tracked (above).
        self.job_events: dict[str, tuple[tuple[bool, HandlerCall | None, float], ...]] = {}
        self.handler_waits: list[float] = []
        self.kopf_calls: dict[str, list[float]] = defaultdict(list)
        self.events_posted: dict[str, int] = defaultdict(int)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def reset(self) -> None:
        """Forget what was recorded (each scenario is read on its own)."""
        with self._lock:
            self.passes.clear()
            self.requests.clear()
            self.job_events.clear()
            self.handler_waits.clear()
            self.kopf_calls.clear()
            self.events_posted.clear()

    # -- installation
    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> None:
        import kopf._cogs.clients.api as kopf_api

        from kwarp.operator import app
        from kwarp.operator.jobindex import JobIndex
        from kwarp.operator.kube import Kube
        from kwarp.operator.reconcile import Reconciler
        from kwarp.store.local import FileStore

        tracer = self

        class TimedExecutor(concurrent.futures.ThreadPoolExecutor):
            def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
                submitted = time.monotonic()

                def timed() -> Any:
                    started = time.monotonic()
                    with tracer._lock:
                        tracer.handler_waits.append(started - submitted)
                    tracer._local.handler = HandlerCall(submitted, started)
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        tracer._local.handler = None

                return super().submit(timed)

        def settings_with_timed_executor(original: Any) -> Any:
            def make(options: Any) -> Any:
                settings = original(options)
                settings.execution.executor = TimedExecutor(max_workers=options.max_workers)
                return settings

            return make

        self._wrap(app, "kopf_settings", settings_with_timed_executor)

        def index_event(original: Any) -> Any:
            def event(self_: Any, namespace: str, run: str, job: Any, *, deleted: bool, **kwargs: Any) -> bool:
                done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                           for c in (job.get("status") or {}).get("conditions") or [])  # fmt: skip
                name = (job.get("metadata") or {}).get("name")
                entry = (done, getattr(tracer._local, "handler", None), time.monotonic())
                with tracer._lock:
                    tracer.job_events[name] = tracer.job_events.get(name, ()) + (entry,)
                return original(self_, namespace, run, job, deleted=deleted, **kwargs)  # whether the handler queues a pass

            return event

        self._wrap(JobIndex, "event", index_event)

        def request(original: Any) -> Any:
            def run(self_: Any, namespace: str, name: str, **kwargs: Any) -> Any:
                with tracer._lock:
                    tracer.requests.append((name, time.monotonic(), bool(kwargs.get("urgent"))))
                return original(self_, namespace, name, **kwargs)

            return run

        self._wrap(Reconciler, "request", request)

        def reconcile(original: Any) -> Any:
            def run(self_: Any, namespace: str, name: str) -> Any:
                p = Pass(run=name, start=time.monotonic())
                cpu0 = time.thread_time()
                self._local.current = p
                try:
                    return original(self_, namespace, name)
                finally:
                    self._local.current = None
                    p.end, p.cpu = time.monotonic(), time.thread_time() - cpu0
                    with tracer._lock:
                        tracer.passes.append(p.record())

            return run

        self._wrap(Reconciler, "reconcile", reconcile)

        def call(original: Any) -> Any:
            def run(self_: Any, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
                t0 = time.monotonic()
                try:
                    return original(self_, method, path, body, **kwargs)
                finally:
                    p = getattr(tracer._local, "current", None)
                    if p is not None:
                        job = (body.get("metadata") or {}).get("name") if method == "POST" and isinstance(body, dict) else None
                        p.calls.append((resource_of(method, path), t0, time.monotonic() - t0, job))

            return run

        self._wrap(Kube, "_call", call)

        def store_method(method: str) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                def run(self_: Any, *args: Any, **kwargs: Any) -> Any:
                    depth = getattr(tracer._local, "store_depth", 0)
                    tracer._local.store_depth = depth + 1
                    t0 = time.monotonic()
                    try:
                        return original(self_, *args, **kwargs)
                    finally:
                        tracer._local.store_depth = depth
                        p = getattr(tracer._local, "current", None)
                        if p is not None and depth == 0:
                            p.store.append((method, t0, time.monotonic() - t0))

                return run

            return make

        for method in STORE_METHODS:
            if method in FileStore.__dict__:
                self._wrap(FileStore, method, store_method(method))

        def kopf_request(original: Any) -> Any:
            async def run(method: str, url: str, **kwargs: Any) -> Any:
                t0 = time.monotonic()
                try:
                    return await original(method=method, url=url, **kwargs)
                finally:
                    if "watch=true" not in url:
                        with tracer._lock:
                            tracer.kopf_calls[resource_of(method.upper(), url.split("://", 1)[-1].split("/", 1)[-1])
                                              ].append(time.monotonic() - t0)  # fmt: skip

            return run

        self._wrap(kopf_api, "request", kopf_request)

        def post_event(original: Any) -> Any:
            def run(body: Any, type_: str, reason: str, message: str) -> None:
                with tracer._lock:
                    tracer.events_posted[reason] += 1
                original(body, type_, reason, message)

            return run

        self._wrap(app, "post_event", post_event)

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # -- figures
    def per_reconcile(self, runs: set[str]) -> dict[str, Any]:
        passes = [p for p in self.passes if p.run in runs]
        n = max(len(passes), 1)
        calls: dict[str, list[float]] = defaultdict(list)
        store: dict[str, list[float]] = defaultdict(list)
        for p in passes:
            for kind, _, seconds, _ in p.calls:
                calls[kind].append(seconds)
            for method, _, seconds in p.store:
                store[method].append(seconds)
        wall = sum(p.end - p.start for p in passes)
        return {
            "passes": len(passes),
            "wall_ms_mean": round(1000 * wall / n, 1),
            "cpu_ms_mean": round(1000 * sum(p.cpu for p in passes) / n, 2),
            "api_calls_per_pass": {k: round(len(v) / n, 3) for k, v in sorted(calls.items())},
            "api_ms_per_pass": {k: round(1000 * sum(v) / n, 1) for k, v in sorted(calls.items())},
            "api_ms_mean_per_call": {k: round(1000 * statistics.mean(v), 1) for k, v in sorted(calls.items())},
            "store_ops_per_pass": {k: round(len(v) / n, 3) for k, v in sorted(store.items())},
            "store_ms_per_pass": {k: round(1000 * sum(v) / n, 2) for k, v in sorted(store.items())},
            "other_ms_per_pass": round(1000 * (wall - sum(map(sum, calls.values())) - sum(map(sum, store.values()))) / n, 1),
            "requests": sum(1 for r, _, _ in self.requests if r in runs),
            "requests_urgent": sum(1 for r, _, urgent in self.requests if r in runs and urgent),
        }

    def kopf_overhead(self) -> dict[str, Any]:
        waits = sorted(self.handler_waits)
        return {
            "handler_thread_wait_ms": {"p50": _ms(_pct(waits, 0.5)), "p99": _ms(_pct(waits, 0.99)),
                                       "mean": _ms(statistics.mean(waits)) if waits else None, "n": len(waits)},
            "kopf_api_calls": {k: {"n": len(v), "mean_ms": _ms(statistics.mean(v))} for k, v in sorted(self.kopf_calls.items())},
            "events_posted": dict(self.events_posted),
        }  # fmt: skip

    def breakdown(self, edges: list[tuple[str, str, str, float, float]], t0: float = 0.0) -> dict[str, Any]:
        """edges: (run, dependency Job, new Job, dependency completed at, new Job seen at). With the scenario's
        start `t0`, `slowest_1pct` lists the slowest reactions one by one in the order they happened (when the
        completion came, s after t0; the edge's tasks; the reaction and its segments, ms): when they came, and
        which edges, says what they wait for."""
        creating: dict[str, tuple[PassRecord, float, float]] = {}
        for p in self.passes:
            for kind, start, seconds, job in p.calls:
                if kind == "POST job" and job and job not in creating:
                    creating[job] = (p, start, seconds)
        names = ("deliver", "thread_wait", "queued", "before_create", "create", "visible")
        rows: list[tuple[float, dict[str, float], dict[str, float], tuple[float, str]]] = []
        early = 0
        for run, dep, new, completed, seen in edges:
            made = creating.get(new)
            event = next(((h, at) for done, h, at in self.job_events.get(dep, []) if done), None)
            if made is None or event is None:
                continue
            p, post_start, post_seconds = made
            handler, handled_at = event
            submitted = handler.submitted if handler else handled_at
            started = handler.started if handler else handled_at
            if p.start < started:
                # The creating pass began before the completion's event was handled: it saw the task's
                # outputs in the store (written before the Job completes) on account of another event.
                early += 1
                submitted = started = completed
            marks = [completed, submitted, started, max(started, p.start), post_start, post_start + post_seconds, seen]
            for i in range(1, len(marks)):  # clamp: each mark at or after the one before, none after `seen`
                marks[i] = min(max(marks[i], marks[i - 1]), max(seen, marks[0]))
            segs = {n: marks[i + 1] - marks[i] for i, n in enumerate(names)}
            before: dict[str, float] = defaultdict(float)
            for kind, start, seconds, _ in p.calls:
                if start < post_start:
                    before[kind] += seconds
            before["store"] = sum(seconds for _, start, seconds in p.store if start < post_start)
            edge = f"{dep[len(run) + 1:]} -> {new[len(run) + 1:]}"
            rows.append((seen - completed, segs, dict(before), (completed - t0, edge)))
        if not rows:
            return {"edges": 0}
        rows.sort(key=lambda r: r[0])
        tail = rows[int(0.99 * (len(rows) - 1)) :]
        out: dict[str, Any] = {"edges": len(rows), "created_by_a_pass_begun_before_the_event": early,
                               "reaction_p50_ms": _ms(rows[len(rows) // 2][0]),
                               "reaction_p99_ms": _ms(rows[int(0.99 * (len(rows) - 1))][0])}  # fmt: skip
        for n in names:
            values = sorted(r[1][n] for r in rows)
            out[n] = {"p50": _ms(_pct(values, 0.5)), "p99": _ms(_pct(values, 0.99)), "mean": _ms(statistics.mean(values)),
                      "mean_in_slowest_1pct": _ms(statistics.mean(r[1][n] for r in tail))}  # fmt: skip
        kinds = sorted({k for r in rows for k in r[2]})
        out["before_create_mean_ms_by_kind"] = {k: _ms(statistics.mean(r[2].get(k, 0.0) for r in rows)) for k in kinds}
        out["slowest_1pct"] = [{"at_s": round(r[3][0], 1), "edge": r[3][1], "ms": _ms(r[0]), **{n: _ms(r[1][n]) for n in names}}
                               for r in sorted(tail, key=lambda r: r[3][0])]  # fmt: skip
        return out


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))] if values else 0.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)
