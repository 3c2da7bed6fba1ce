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
  The offered Job completions per 10 s window (the most and the mean) are printed, so the load is seen, and
  the reactions grouped by the offered rate of the window their completion fell in.

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
  watches of Jobs and WarpRuns (their threads), and the operator (the rest of this process: kopf's loop,
  the reconcile threads and the operator's informer of its Jobs); CPU per created Job for each (with
  --trace, kopf's loop and the informer's thread apart too);
- with --profile, where the operator's time goes: a sampling profiler over the operator's threads
  (every 5 ms, inclusive samples per function, the top 20 printed).

Garbage collection: each process's collections are recorded (count, total, longest, each of >= 100 ms).
The operator's process applies exactly what `kwarp.operator.app.serve` applies in production, and holds no
torch (the production operator's image has none; the pods that write checkpoints run in the Job
controller's process); what it holds at the end (tracked and frozen objects, the most common types, resident
memory, whether torch was imported) is printed and in the JSON (`operator_process`). The API server and the
Job controller stand in for Go programs, whose collector does not stop the program: their full collections
are deferred (`--emulator-gc deferred`, the default: third threshold 1000) or CPython's default
(`--emulator-gc default`). `--gc-threshold2 N` (`--gc-in all|operator`) sets the third threshold in every
process or in the operator's alone, as an experiment.

Progress (runs Succeeded, Jobs created, elapsed) is printed to stderr every 10 s. The operator's resync
timer is 600 s (paced: 3600 s): the runs are created together, so their timers would fire in the same
second, a burst of passes that is not the reaction to a completion.

The machine is shared by the API server, the operator, the Job controller and the store (a local
folder): figures are a lower bound for an operator with an API server and MinIO of its own.

The cluster's processes, clients, watches and pods are in benchmarks/operator_cluster.py; the figures
(reaction edges, percentiles, CPU per component, the profiler) in benchmarks/operator_report.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402

from benchmarks.operator_cluster import (  # noqa: E402
    BENCHMARK,
    CONTROLLER,
    NS,
    OPERATOR,
    Client,
    ControllerProcess,
    JobClock,
    RunPhases,
    TimedRunner,
    serve_api,
)
from benchmarks.operator_report import (  # noqa: E402
    Components,
    Sampler,
    by_run,
    completions_per_window,
    gc_summary,
    histogram_quantile,
    offered_completions,
    pct,
    process_heap,
    reaction_by_offered_load,
    reaction_edges,
    requests_per_job,
    scrape,
    thread_cpu,
)
from benchmarks.operator_trace import Tracer  # noqa: E402
from kwarp.operator.app import OperatorOptions  # noqa: E402
from kwarp.operator.jobs import WorkerSettings  # noqa: E402
from tests.kube import Cluster, RunningOperator, wait_for  # noqa: E402
from tests.operator_harness import options, warprun  # noqa: E402

# Issue 17's goal for the operator's reaction (a Job's completion to the creation of the Job it unblocked).
GOAL_P99 = 0.250
# --emulator-gc deferred: the third collection threshold in the API server's and Job controller's processes
# (CPython's default 10). They stand in for kube-apiserver and kube-controller-manager, Go programs whose
# collector runs beside the program instead of stopping it; with CPython's default their full collections
# stopped them for up to 3.2 s at 1000 runs (docs/performance.md, "Paced Jobs").
EMULATOR_DEFERRED_THRESHOLD2 = 1000


def emulator_threshold2(emulator_gc: str, gc_threshold2: int | None, gc_in: str) -> int | None:
    """The third threshold for the emulator's processes (None: CPython's default): --gc-threshold2 when it
    applies to every process, else --emulator-gc's."""
    if gc_threshold2 is not None and gc_in == "all":
        return gc_threshold2
    return EMULATOR_DEFERRED_THRESHOLD2 if emulator_gc == "deferred" else None


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
    # The operator's own informer of its Jobs (operator/informer.py), where the operator has one: part of the
    # operator's CPU, as kopf's loop is; its events went through kopf's loop before.
    informers = [t for t in threading.enumerate() if t.name.startswith("kwarp-job-informer")]
    before = scrape(port)
    cpu0 = cpu.read()
    requests0 = cpu.requests()
    loop0 = thread_cpu(loop)
    informer0 = sum(thread_cpu(t) for t in informers)
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
    pauses = gc_summary(cpu.gc_pauses(), t0, time.monotonic())
    print(f"[{prefix}] garbage collection (collections, total, longest ms; those >= 100 ms: s after the start, ms, "
          "generation): " + "; ".join(f"{k}: {v['collections']}, {v['total_ms']}, {v['max_ms']}, {v['at_least_100_ms']}"
                                      for k, v in pauses.items()), file=sys.stderr, flush=True)  # fmt: skip
    after = scrape(port)
    count = after["kwarp_operator_reconcile_duration_seconds_count"] - before.get("kwarp_operator_reconcile_duration_seconds_count", 0)
    total = after["kwarp_operator_reconcile_duration_seconds_sum"] - before.get("kwarp_operator_reconcile_duration_seconds_sum", 0)
    jobs = sum(len(names) for names in by_run(clock.added, runs).values())
    edges = reaction_edges(clock, runs, warprun(store, runs[0], **spec_patch))
    latencies = [seen - completed for _, _, _, completed, seen in edges]
    counts = completions_per_window(clock.completed, runs, t0)
    offered = offered_completions(counts)
    by_load = reaction_by_offered_load(edges, counts, t0)
    ran = [clock.ran[name] for names in by_run(clock.ran, runs).values() for name in names]
    succeeded = sum(cpu.phases.phases.get(run) == "Succeeded" for run in runs)
    p99 = pct(latencies, 0.99)
    print(f"[{prefix}] Job completions offered per {offered.get('window_s')} s window: max "
          f"{offered.get('max_per_s')}/s, mean {offered.get('mean_per_s')}/s; reaction p99 {1000 * p99:.0f} ms: "
          f"{'meets' if p99 < GOAL_P99 else 'does NOT meet'} the goal (< {1000 * GOAL_P99:.0f} ms)",
          file=sys.stderr, flush=True)  # fmt: skip
    print(f"[{prefix}] reaction by the completions offered in its window (Jobs/s: edges, p50, p99 ms, of the slowest "
          "1%): " + "; ".join(f"{g['offered_per_s']}: {g['edges']}, {g['p50_ms']}, {g['p99_ms']}, {g['of_the_slowest_1pct']}"
                              for g in by_load), file=sys.stderr, flush=True)  # fmt: skip
    loop_cpu = thread_cpu(loop) - loop0
    informer_cpu = sum(thread_cpu(t) for t in informers) - informer0
    requests = requests_per_job(requests0, requests1, jobs)
    for client in (OPERATOR, CONTROLLER, BENCHMARK):  # where the API server's work comes from, readable
        kinds = requests.get(client, {})
        print(f"[{prefix}] API requests per Job, {client}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    traced = {} if tracer is None else {"trace": {"kopf_loop_cpu_ms_per_job": round(1000 * loop_cpu / max(jobs, 1), 1),
                                                  "informer_cpu_ms_per_job": round(1000 * informer_cpu / max(jobs, 1), 1),
                                                  "per_reconcile": tracer.per_reconcile(names),
                                                  "kopf": tracer.kopf_overhead(), "reaction": tracer.breakdown(edges, t0)}}
    if tracer is not None:  # when the slowest reactions came, and between which tasks
        slowest = traced["trace"]["reaction"].get("slowest_1pct", [])
        minutes = Counter(int(r["at_s"] // 60) for r in slowest)
        kinds = Counter(re.sub(r"\d+", "N", r["edge"]) for r in slowest)
        print(f"[{prefix}] the slowest 1% of reactions by minute of the scenario: "
              + ", ".join(f"{m}: {n}" for m, n in sorted(minutes.items())) + "; by edge: "
              + ", ".join(f"{k}: {n}" for k, n in kinds.most_common()), file=sys.stderr, flush=True)  # fmt: skip
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
        "reaction_by_offered_load": by_load,
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 1) for k in cpu1},
        "cpu_ms_per_job": {k: round(1000 * (cpu1[k] - cpu0[k]) / jobs, 1) for k in cpu1},
        # Watches count once per watch request (kopf's last server_timeout, the benchmark's 1 s), not per event.
        "api_requests_per_job": requests,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "jobs_missed_by_the_job_controllers_watch": missed,
        "gc_pauses": pauses,
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
    parser.add_argument("--gc-threshold2", type=int, default=None, metavar="N",
                        help="in every process of the benchmark, a full garbage collection waits for N collections of "
                             "the middle generation (gc.set_threshold's third value; Python's default is 10)")
    parser.add_argument("--gc-in", choices=["all", "operator"], default="all",
                        help="where --gc-threshold2 applies: every process, or the operator's process alone")
    parser.add_argument("--emulator-gc", choices=["deferred", "default"], default="deferred",
                        help="the API server's and Job controller's processes: full collections deferred (third "
                             f"threshold {EMULATOR_DEFERRED_THRESHOLD2}, the default: stand-ins for Go programs) or "
                             "CPython's default; the operator's process keeps what serve sets, unless --gc-threshold2")
    parser.add_argument("--profile-emulator", metavar="DIR",
                        help="profile the API server's and the Job controller's processes (cProfile on every thread, "
                             "CPU time: benchmarks/thread_profile.py); api_server.pstats and job_controller.pstats in DIR")
    parser.add_argument("--trace", action="store_true",
                        help="break each reaction and reconcile down (API calls, store, kopf's queues): operator_trace.py")
    args = parser.parse_args()
    if args.profile_emulator:
        args.profile_emulator = str(Path(args.profile_emulator).resolve())
        Path(args.profile_emulator).mkdir(parents=True, exist_ok=True)
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
    others_gc = emulator_threshold2(args.emulator_gc, args.gc_threshold2, args.gc_in)  # the API server's, Job controller's
    gc_setup = {"emulator": args.emulator_gc, "emulator_threshold2": others_gc,
                "operator_threshold2_set_by_the_benchmark": args.gc_threshold2}  # None: as serve leaves it
    print(f"[setup] garbage collection: API server and Job controller {args.emulator_gc} (third threshold "
          f"{others_gc or 'CPython default'}); the operator's process "
          + (f"third threshold {args.gc_threshold2} (--gc-threshold2)" if args.gc_threshold2 is not None
             else "as kwarp.operator.app.serve sets it"), file=sys.stderr, flush=True)  # fmt: skip
    ready, stop = ctx.Event(), ctx.Event()
    api_conn, api_child = ctx.Pipe()
    server = ctx.Process(target=serve_api, args=(str(workdir / "api"), ready, stop, api_child, others_gc,
                                                        args.profile_emulator), daemon=True)
    server.start()
    try:
        if not ready.wait(600):  # the child imports the kubernetes client and the emulator: slow on a loaded machine
            raise SystemExit("the API server did not start")
        cluster = Client(workdir / "api", BENCHMARK)  # the client side only: the child process serves it
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # The resync timer beyond the scenario's end (600 s; paced: an hour), so that watch events alone drive
        # progress: the runs are created together, so their timers would all fire in the same second.
        # The collector as the production operator sets it (the tests' options leave it alone).
        opts = options(metrics_port=port, bind_address="127.0.0.1", worker=WorkerSettings(image="kwarp-worker:bench"),
                       max_workers=args.workers, resync_seconds=3600 if paced else 600,
                       collections=OperatorOptions().collections)  # fmt: skip
        tracer = Tracer() if args.trace else None
        if tracer is not None:
            tracer.install()  # before the operator starts: it wraps what the operator builds
        with JobClock(cluster) as clock, RunPhases(cluster) as phases, \
                (TimedRunner(Client(workdir / "api", CONTROLLER), clock.completed, clock.ran, job_seconds=args.job_seconds,
                             seed=args.seed) if args.controller_in_process
                 else ControllerProcess(ctx, workdir / "api", args.job_seconds, args.seed, others_gc,
                                           args.profile_emulator)) as runner, \
                RunningOperator(cluster, opts, configuration=Client(workdir / "api", OPERATOR).configuration):
            cpu = Components(server.pid, runner, clock, phases, api_conn, args.gc_threshold2)
            floor = api_floor(cluster, clock)
            baseline = None if args.skip_baseline else scenario(
                cluster, store, port, clock, 1, "solo", args.iterations, args.members, cpu, tracer, args.job_seconds)
            exclude = {t.ident for t in (threading.main_thread(), clock._thread, phases._thread) if t is not None}
            if isinstance(runner, TimedRunner):
                exclude |= {t.ident for t in (runner._thread, *runner.pods.threads, *runner.worker_threads) if t is not None}
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
            heap = process_heap()  # before the operator stops: what it held at the end of the load scenario
            print("[load] the operator's process: " + ", ".join(f"{k} {v}" for k, v in heap.items() if k != "tracked_by_type"),
                  file=sys.stderr, flush=True)  # fmt: skip
            cpu.missed_by_watch()  # the child's errors, as of now
            if cpu.errors():
                raise SystemExit(f"the Job controller failed: {cpu.errors()[:3]}")
            # Written before the operator is stopped: stopping it can take longer than RunningOperator
            # waits with 1000 runs on a loaded machine, and that must not lose the figures.
            figures = {
                "machine": {"cpus": os.cpu_count()},
                "operator_reconcile_threads": args.workers,
                "job_controller": "in this process" if args.controller_in_process else "a child process",
                "garbage_collection": gc_setup,
                "operator_process": heap,
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
