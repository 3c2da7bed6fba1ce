"""benchmarks/operator.py's paced scenario (`--job-seconds LO:HI`): each Job's pod runs for a duration
drawn from the seed and the Job's name before the stand-in Job controller completes it. Run tiny, through
the real API-server emulator, Job controller and operator, as the benchmark runs them."""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.operator import EMULATOR_DEFERRED_THRESHOLD2, emulator_threshold2, job_seconds_arg
from benchmarks.operator_cluster import GcPauses, Pods, pod_seconds
from benchmarks.operator_report import completions_per_window, offered_completions, reaction_by_offered_load
from benchmarks.operator_trace import Pass

ROOT = Path(__file__).resolve().parents[1]


def test_job_seconds_parse_and_default_instant() -> None:
    assert job_seconds_arg("60:120") == (60.0, 120.0)
    assert job_seconds_arg("0:0") == (0.0, 0.0)
    assert job_seconds_arg("5") == (5.0, 5.0)
    for bad in ("120:60", "-1:2", "a:b"):
        with pytest.raises(argparse.ArgumentTypeError):
            job_seconds_arg(bad)
    assert pod_seconds((0.0, 0.0), 0, "load-000-prepare") == 0.0  # the instant scenario: no pod waits


def test_pod_seconds_drawn_from_seed_and_name() -> None:
    names = [f"load-{i:03d}-i0-m{m}" for i in range(50) for m in range(2)]
    drawn = [pod_seconds((60.0, 120.0), 7, n) for n in names]
    backwards = [pod_seconds((60.0, 120.0), 7, n) for n in reversed(names)]
    assert drawn == backwards[::-1]  # the order they are drawn in does not matter
    assert all(60.0 <= d <= 120.0 for d in drawn)
    assert len(set(drawn)) == len(drawn)
    assert drawn != [pod_seconds((60.0, 120.0), 8, n) for n in names]
    assert min(drawn) < 75 and max(drawn) > 105  # spread over the range, not one value


def test_reactions_grouped_by_the_load_offered_in_their_window() -> None:
    """Completions at t0 + 5 s (3 in that window: 0.3/s) react in 10 ms; 320 completions in the window at
    t0 + 20 s (32/s) react in 10 ms, but 4 of them in 2 s: those 4 are the slowest 1% of 323, all in >=30."""
    t0 = 100.0
    completed = {f"r-{i:03d}-prepare": t0 + 5 for i in range(3)} | {f"r-{i:03d}-i0-m0": t0 + 25 for i in range(320)}
    runs = [f"r-{i:03d}" for i in range(320)]
    counts = completions_per_window(completed, runs, t0)
    assert counts == [3, 0, 320]
    assert offered_completions(counts) == {"window_s": 10.0, "max_per_s": 32.0, "mean_per_s": 10.8}
    edges = [("r", n, "next", done, done + (2.0 if i < 4 else 0.01)) for i, (n, done) in
             enumerate(sorted(completed.items(), key=lambda kv: -kv[1]))]  # fmt: skip
    groups = {g["offered_per_s"]: g for g in reaction_by_offered_load(edges, counts, t0)}
    assert list(groups) == ["<10", "10-20", "20-30", ">=30"]
    assert (groups["<10"]["edges"], groups["<10"]["p99_ms"], groups["<10"]["of_the_slowest_1pct"]) == (3, 10.0, 0)
    assert groups["10-20"]["edges"] == groups["20-30"]["edges"] == 0 and groups["20-30"]["p99_ms"] is None
    assert (groups[">=30"]["edges"], groups[">=30"]["p99_ms"], groups[">=30"]["of_the_slowest_1pct"]) == (320, 2000.0, 4)


def test_gc_pauses_recorded_and_threshold2_set() -> None:
    threshold = gc.get_threshold()
    pauses = GcPauses(threshold2=1234)
    try:
        assert gc.get_threshold() == (*threshold[:2], 1234)
        before = time.monotonic()
        gc.collect()
        start, seconds, generation = pauses.pauses[-1]
        assert generation == 2 and before <= start <= time.monotonic() and seconds >= 0
    finally:
        pauses.close()
        gc.set_threshold(*threshold)
    n = len(pauses.pauses)
    gc.collect()
    assert len(pauses.pauses) == n  # closed: no longer recording


def test_the_benchmarks_operator_process_imports_no_torch() -> None:
    """The process that hosts the operator imports the benchmark and its cluster, as the benchmark does; the
    production operator's image has no torch, so neither may this process (its objects lengthen every full
    collection there). Run in a fresh interpreter: this test process may have torch from other tests."""
    code = ("import sys; sys.path.insert(0, '.'); import benchmarks.operator, benchmarks.operator_trace; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")  # fmt: skip
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "[]"


def test_emulator_collections_deferred_by_default_and_flags_override() -> None:
    assert emulator_threshold2("deferred", None, "all") == EMULATOR_DEFERRED_THRESHOLD2 == 1000
    assert emulator_threshold2("default", None, "all") is None  # CPython's default in the emulator
    assert emulator_threshold2("default", 50, "all") == 50  # --gc-threshold2 in every process
    assert emulator_threshold2("deferred", 50, "operator") == 1000  # the operator's alone: the emulator as chosen
    assert emulator_threshold2("default", 50, "operator") is None


def test_finished_passes_are_kept_untracked_by_the_collector() -> None:
    """The tracer's record of a finished pass holds its calls in tuples of strings and numbers only: after a
    collection the collector no longer tracks them, so thousands of passes add one tracked object each (the
    record) to what a full collection walks, not their lists of calls."""
    p = Pass(run="load-001", start=1.0)
    p.calls.append(("POST job", 1.1, 0.01, "load-001-prepare"))
    p.store.append(("exists", 1.05, 0.001))
    p.end, p.cpu = 1.2, 0.004
    record = p.record()
    assert (record.run, record.calls, record.store) == ("load-001", (("POST job", 1.1, 0.01, "load-001-prepare"),),
                                                        (("exists", 1.05, 0.001),))  # fmt: skip
    gc.collect()
    assert not gc.is_tracked(record.calls) and not gc.is_tracked(record.store)
    assert gc.is_tracked(p.calls)  # what it replaces: a list stays tracked


def test_pods_wait_their_duration_on_one_timer_thread() -> None:
    """200 paced pods: each finishes no sooner than its drawn duration after it started, and the waiting
    takes one timer thread beside the pod threads, whatever the number of pods."""
    finished: dict[str, float] = {}
    lock = threading.Lock()

    def finish(job: dict[str, Any]) -> None:
        with lock:
            finished[job["metadata"]["name"]] = time.monotonic()

    bounds = (0.05, 0.3)
    before = threading.active_count()
    with Pods(finish, n=2, job_seconds=bounds, seed=1) as pods:
        assert [t.name for t in pods.threads] == ["pod-0", "pod-1", "pod-timer"]
        started = {}
        for i in range(200):
            name = f"load-{i:03d}-prepare"
            started[name] = time.monotonic()
            pods.start({"metadata": {"name": name}})
        assert threading.active_count() == before + 3  # 200 pods asleep, no thread of their own
        deadline = time.monotonic() + 60
        while len(finished) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert set(finished) == set(started)
    assert all(finished[n] - started[n] >= pod_seconds(bounds, 1, n) for n in started)
    assert not any(t.is_alive() for t in pods.threads)  # stopped on exit, with pods still asleep or not


def test_paced_scenario_runs_every_job_its_duration(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-P", "benchmarks/operator.py", "--runs", "2", "--job-seconds", "0.2:0.5", "--seed", "3",
         "--skip-baseline", "--trace", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[setup] scenario: paced, each Job's pod runs 0.2-0.5 s (uniform, seed 3)" in done.stderr
    assert "[load] Job completions offered per 10.0 s window: max" in done.stderr
    figures = json.loads(out.read_text())
    assert figures["scenario"] == {"name": "paced", "job_seconds": [0.2, 0.5], "seed": 3}
    load = figures["load_2_runs"]
    assert load["runs_succeeded"] == 2 and load["jobs"] == 18
    # No pass failed under the tracer's wrappers (a wrapper that rejected JobIndex.event's `accounted` made every
    # creating pass raise after its POST, and the runs still succeeded on the retries).
    assert "failed; it is tried again" not in done.stderr
    assert load["edges"] == 16  # every Job but the two prepares waited for another
    ran = load["job_run_seconds"]
    assert ran["jobs"] == 18 and ran["min"] >= 0.2  # no pod completed before its drawn duration
    offered = load["job_completions_offered"]
    assert offered["window_s"] == 10.0 and 0 < offered["mean_per_s"] <= offered["max_per_s"]
    assert sum(g["edges"] for g in load["reaction_by_offered_load"]) == 16
    assert "[load] reaction by the completions offered in its window" in done.stderr
    slowest = load["trace"]["reaction"]["slowest_1pct"]  # the tail, one by one, in the order it came
    assert slowest and all(r["edge"].count(" -> ") == 1 and r["ms"] >= 0 for r in slowest)
    assert [r["at_s"] for r in slowest] == sorted(r["at_s"] for r in slowest)
    assert "[load] the slowest 1% of reactions by minute of the scenario: 0: " in done.stderr
    gcs = load["gc_pauses"]  # each process's collections during the scenario: some in every one
    assert set(gcs) == {"api_server", "operator_process", "job_controller"}
    assert all(g["collections"] > 0 and g["max_ms"] <= g["total_ms"] + 1 for g in gcs.values())
    assert figures["garbage_collection"] == {"emulator": "deferred", "emulator_threshold2": 1000,
                                             "operator_threshold2_set_by_the_benchmark": None}  # fmt: skip
    assert "[setup] garbage collection: API server and Job controller deferred (third threshold 1000)" in done.stderr
    heap = figures["operator_process"]  # the operator's process at the end: no torch, what it holds
    assert heap["torch_imported"] is False
    assert heap["tracked_objects"] > 0 and heap["peak_rss_mib"] >= heap["rss_mib"] > 0
    assert load["goal_reaction_p99_below_ms"] == 250.0
    assert load["goal_met"] == (load["reaction_p99_ms"] < 250.0)
