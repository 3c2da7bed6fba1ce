"""The figures benchmarks/operator.py computes: reaction edges and percentiles, the operator's reconcile
histogram (scraped from its /metrics), the offered Job completions, API requests per Job by client, the
CPU time of each component, and a sampling profiler of the operator's threads.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Self

from benchmarks.operator_cluster import ControllerProcess, GcPauses, JobClock, RunPhases, TimedRunner
from kwarp.core.plan import Task, dependencies
from kwarp.core.spec import parse
from tests.background import Background


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


def completions_per_window(completed: dict[str, float], runs: list[str], t0: float, window: float = 10.0) -> list[int]:
    """How many of the runs' Jobs completed in each `window` s from the runs' creation (t0) to the last one."""
    times = [completed[name] for names in by_run(completed, runs).values() for name in names]
    counts = [0] * (int((max(times) - t0) // window) + 1) if times else []
    for t in times:
        counts[int((t - t0) // window)] += 1
    return counts


def offered_completions(counts: list[int], window: float = 10.0) -> dict[str, Any]:
    """The Job completions the operator was offered (`completions_per_window`): the most in one window and the
    mean, in Jobs per second; how loaded the operator was."""
    if not counts:
        return {}
    return {"window_s": window, "max_per_s": round(max(counts) / window, 1),
            "mean_per_s": round(sum(counts) / (len(counts) * window), 1)}  # fmt: skip


def reaction_by_offered_load(edges: list[tuple[str, str, str, float, float]], counts: list[int], t0: float,
                             window: float = 10.0, bands: tuple[float, ...] = (10.0, 20.0, 30.0)) -> list[dict[str, Any]]:  # fmt: skip
    """The reactions grouped by how many completions per second were offered in the window their completion
    fell in (bands in Jobs/s): whether the slow ones are those of the busiest windows. Each group's share of
    the slowest 1% of all reactions is given too."""
    latencies = [seen - done for _, _, _, done, seen in edges]
    if not latencies:
        return []
    slow = pct(latencies, 0.99)
    labels = [f"<{bands[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(bands, bands[1:], strict=False)] + [f">={bands[-1]:g}"]
    groups: dict[str, list[float]] = {label: [] for label in labels}
    for latency, (_, _, _, done, _) in zip(latencies, edges, strict=True):
        i = int((done - t0) // window)
        rate = counts[i] / window if 0 <= i < len(counts) else 0.0
        groups[labels[sum(rate >= b for b in bands)]].append(latency)
    return [{"offered_per_s": label, "edges": len(group),
             "p50_ms": round(1000 * pct(group, 0.5), 1) if group else None,
             "p99_ms": round(1000 * pct(group, 0.99), 1) if group else None,
             "of_the_slowest_1pct": sum(x >= slow for x in group)} for label, group in groups.items()]  # fmt: skip


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
                 api: Any = None, gc_threshold2: int | None = None):  # fmt: skip
        self.server_pid, self.runner, self.clock, self.phases = server_pid, runner, clock, phases
        self.api = api  # the API server's end of the pipe to serve_api
        self.own_gc = GcPauses(gc_threshold2)  # this process's collections (the operator's)

    def requests(self) -> dict[tuple[str, ...], int]:
        """The requests the API server has served so far, by (client, group, resource, verb); main thread only."""
        self.api.send("calls")
        return self.api.recv()

    def gc_pauses(self) -> dict[str, list[tuple[float, float, int]]]:
        """Each process's garbage collection pauses so far (main thread only; the controller's as of the last
        missed_by_watch): the API server, the Job controller (when in a process of its own) and this one
        (the operator, with the benchmark's watches; and the controller with --controller-in-process)."""
        self.api.send("gc")
        out = {"api_server": self.api.recv(), "operator_process": list(self.own_gc.pauses)}
        if isinstance(self.runner, ControllerProcess):
            out["job_controller"] = self.runner.gc_pauses
        return out

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
        runner = thread_cpu(self.runner._thread) + sum(thread_cpu(t) for t in [*self.runner.pods.threads, *self.runner.worker_threads])
        clock = thread_cpu(self.clock._thread) + thread_cpu(self.phases._thread)
        main = thread_cpu(threading.main_thread())
        return {"api_server": proc_cpu(f"/proc/{self.server_pid}/stat"), "job_controller": runner,
                "watches": clock, "operator": process - runner - clock - main}  # fmt: skip


class Sampler(Background):
    """A sampling profiler of the operator's threads: every `interval` s, each thread's stack; a function
    is counted once per sample it is on the stack of (inclusive)."""

    def __init__(self, exclude: set[int], interval: float = 0.005, only: int | None = None):
        self.exclude, self.interval, self.only = exclude, interval, only  # only: that thread alone
        self.inclusive: dict[str, int] = {}
        self.samples = 0
        super().__init__("sampler")

    def __enter__(self) -> Self:
        self.exclude |= {threading.get_ident()}
        return super().__enter__()

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


def gc_summary(pauses: dict[str, list[tuple[float, float, int]]], t0: float, t1: float,
               long: float = 0.1) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per process, the collections between t0 and t1: how many, their total and longest (ms), and when (s
    after t0) each one of at least `long` s began, with its length (ms) and generation."""
    out = {}
    for process, found in pauses.items():
        within = [(start, seconds, gen) for start, seconds, gen in found if t0 <= start <= t1]
        out[process] = {"collections": len(within), "total_ms": round(1000 * sum(s for _, s, _ in within)),
                        "max_ms": round(1000 * max((s for _, s, _ in within), default=0.0), 1),
                        f"at_least_{int(1000 * long)}_ms": [(round(start - t0, 1), round(1000 * seconds), gen)
                                                           for start, seconds, gen in within if seconds >= long]}  # fmt: skip
    return out


def process_heap(top: int = 12) -> dict[str, Any]:
    """What this process (the operator's) holds for its garbage collector, after a full collection (and the
    unreachable objects that collection found: what deferred full collections had left): the
    tracked objects (what each full collection walks), the frozen ones (gc.freeze: walked by none), the
    most common tracked types; the thresholds in force; its resident memory now and at its peak; whether
    torch was imported (the production operator's image has none)."""
    found = gc.collect()  # the unreachable objects it finds: cyclic garbage no collection had freed yet
    objects = gc.get_objects()
    types = Counter(type(o).__name__ for o in objects)
    del objects
    status = Path("/proc/self/status").read_text()
    rss = {k: int(m.group(1)) // 1024 for k in ("VmRSS", "VmHWM") if (m := re.search(rf"^{k}:\s+(\d+) kB", status, re.M))}
    return {"tracked_objects": sum(types.values()), "frozen_objects": gc.get_freeze_count(), "final_collection_found": found,
            "tracked_by_type": dict(types.most_common(top)), "gc_threshold": list(gc.get_threshold()),
            "rss_mib": rss.get("VmRSS"), "peak_rss_mib": rss.get("VmHWM"), "torch_imported": "torch" in sys.modules}  # fmt: skip
