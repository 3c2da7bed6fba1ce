"""Metrics end to end, against real Prometheus and Pushgateway servers (Debian packages, see tests/prom.py).

One simulated WarpRun ("demo", two iterations of two members) drives every component's real metric classes
through the real export paths: trainers, merger and evaluation push with `telemetry.export` (configured from
environment variables, as a Job is), the operator's metrics are served by its own /metrics endpoint, and an
embedded runner's `EmbeddedMetrics` serves a second run ("local-demo"). Prometheus scrapes all three; then
every query of every panel of the generated dashboard must return data, and the alert rules must load.
The values themselves are synthetic: what is under test is the path from a component's metric objects to a
dashboard query, not training.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kwarp.observability import dashboard, telemetry
from kwarp.observability.metrics import (
    CATALOGUE,
    RUN_PHASES,
    EvaluationMetrics,
    MergerMetrics,
    OperatorMetrics,
    TrainerMetrics,
    catalogue_by_series,
    eta_label,
    iteration_labels,
    member_labels,
)
from tests.prom import Prometheus, Pushgateway, ScrapeJob, Servers, finite_values

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "charts" / "kwarp" / "files" / "alerts.yaml"

NAMESPACE = "team-a"
RUN = "demo"
LOCAL_NAMESPACE = "local"
LOCAL_RUN = "local-demo"
ITERATIONS = 2
MEMBERS = 2
STEPS = 6
ETAS = (0.0, 0.3, 1.0)
QUEUE = "team-a-gpus"  # the Kueue LocalQueue the pushed run's Jobs wait in
PUSH_ENV = {"KWARP_PUSH_INTERVAL": "0.2"}
STEP_SLEEP = 0.25  # > the push interval, several steps per 1 s scrape


# --------------------------------------------------------------------------- synthetic task outputs


def step_record(iteration: int, member: int, step: int) -> dict[str, Any]:
    """A metrics.jsonl line (docs/internals.md) with plausible values: reward and KL grow with training."""
    t = iteration * STEPS + step
    wiggle = 0.03 * math.sin(1.7 * step + 2.0 * member)  # members differ, as their seeds make them
    return {
        "step": step, "reward": 0.2 + 0.6 * (1 - math.exp(-t / 15)) + wiggle, "reward_std": 0.1,
        "kl_anchor": 0.5 + 0.1 * step + wiggle, "kl_init": 0.2 * step, "completion_tokens": 20.0 + step,
        "entropy": 2.0 - 0.05 * step, "loss": -0.1, "grad_norm": 1.5, "lr": 1e-5,
        "step_seconds": 0.2 + 0.01 * member, "tokens_per_second": 400.0 + 10 * member, "time": time.time(),
    }


def merge_summary(iteration: int, nbytes: int) -> dict[str, Any]:
    return {
        "iteration": iteration, "lambda": 0.5, "eta": 0.3, "granularity": "layer",
        "groups": [{"name": f"layer.{g}", "angle_deg": 84.0 + g, "norms": [1.0, 1.1]} for g in range(4)],
        "bytes": nbytes, "seconds": 1.0,
    }


def eval_doc(iteration: int) -> dict[str, Any]:
    front = [
        {"eta": eta, "reward": 0.3 + 0.4 * eta + 0.2 * iteration, "reward_stderr": 0.01,
         "kl": 10.0 * eta * (1 + iteration), "kl_stderr": 0.5, "length": 20.0}
        for eta in ETAS
    ]
    return {"iteration": iteration, "reference": "sft", "etas": list(ETAS), "front": front, "seconds": 2.5}


# --------------------------------------------------------------------------- the simulated run


def train_member(env: dict[str, str], iteration: int, member: int) -> None:
    """What `kwarp train` does with its metrics: its own registry, exported for the life of the task."""
    registry = CollectorRegistry()
    metrics = TrainerMetrics.create(registry)
    labels = member_labels(NAMESPACE, RUN, iteration, member)
    with telemetry.export(
        registry, component="trainer", namespace=NAMESPACE, run=RUN, iteration=iteration, member=member, environ=env
    ):
        metrics.start(labels, STEPS)
        for step in range(1, STEPS + 1):
            time.sleep(STEP_SLEEP)
            metrics.record_step(labels, step_record(iteration, member, step))


def merge(env: dict[str, str], iteration: int) -> None:
    registry = CollectorRegistry()
    metrics = MergerMetrics.create(registry)
    labels = iteration_labels(NAMESPACE, RUN, iteration)
    with telemetry.export(registry, component="merger", namespace=NAMESPACE, run=RUN, iteration=iteration, environ=env):
        for _ in range(4):  # streaming shard by shard: bytes grow across scrapes
            metrics.bytes_processed.labels(**labels).inc(1 << 20)
            time.sleep(0.4)
        metrics.record_merge(labels, merge_summary(iteration, 4 << 20), count_bytes=False)


def evaluate(env: dict[str, str], iteration: int) -> None:
    registry = CollectorRegistry()
    metrics = EvaluationMetrics.create(registry)
    with telemetry.export(registry, component="eval", namespace=NAMESPACE, run=RUN, iteration=iteration, environ=env):
        time.sleep(1.2)  # sampling along the LiTI path
        metrics.record_eval(iteration_labels(NAMESPACE, RUN, iteration), eval_doc(iteration))


def operate(metrics: OperatorMetrics, stop: threading.Event) -> None:
    """The operator's reconcile timer: latencies all along, and one error, failure and retry per second."""
    n = 0
    while not stop.wait(0.1):
        metrics.reconcile_seconds.observe(0.004 + 0.002 * (n % 5))
        if n % 10 == 5:
            metrics.reconcile_errors.labels(reason="ApiException").inc()
            metrics.job_failures.labels(kind="train", reason="BackoffLimitExceeded").inc()
            metrics.retries.labels(kind="train").inc()
        n += 1


def member_job(iteration: int, member: int, created: float, started: float | None) -> dict[str, Any]:
    """A member's Job as the API shows it while Kueue holds it (suspended) and once it admitted it."""
    from kwarp.operator.jobs import LABEL_ATTEMPT, LABEL_KUEUE_QUEUE, LABEL_TASK

    def stamp(unix: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))

    return {
        "metadata": {"name": f"{RUN}-i{iteration}-m{member}", "uid": f"uid-{iteration}-{member}",
                     "creationTimestamp": stamp(created),
                     "labels": {LABEL_TASK: f"i{iteration}-m{member}", LABEL_ATTEMPT: "0", LABEL_KUEUE_QUEUE: QUEUE}},
        "spec": {"suspend": started is None},
        "status": {} if started is None else {"startTime": stamp(started), "active": 1},
    }  # fmt: skip


def admit_members(watch: Any, iteration: int) -> None:
    """The operator's view of an iteration's members: both wait in the queue, then Kueue admits them."""
    from kwarp.operator.observe import view

    created = time.time() - 20 * (1 + iteration)
    for started in (None, time.time()):
        jobs = [member_job(iteration, m, created - 5 * m, started) for m in range(MEMBERS)]
        watch.observe(NAMESPACE, RUN, [v for j in jobs if (v := view(j)) is not None])
        time.sleep(STEP_SLEEP)


def set_progress(operator: OperatorMetrics, local: telemetry.EmbeddedMetrics, iteration: int, step: int) -> None:
    """Steps done over the run's total, and the end at one step per STEP_SLEEP, as both executors export them."""
    total = ITERATIONS * MEMBERS * STEPS
    done = MEMBERS * (iteration * STEPS + step)
    end = time.time() + (ITERATIONS * STEPS - iteration * STEPS - step) * STEP_SLEEP
    operator.run.set_progress(NAMESPACE, RUN, done, total, end)
    local.set_progress(done, total, end)


def export_record() -> dict[str, Any]:
    """export.json of the demo run: the final front's point at η = 0.3, measured again when written."""
    point = next(p for p in eval_doc(ITERATIONS - 1)["front"] if p["eta"] == 0.3)
    return {"eta": 0.3, "measured": {"reward": point["reward"] + 0.01, "reward_stderr": 0.02,
                                     "kl": point["kl"] + 0.05, "kl_stderr": 0.03}}  # fmt: skip


def run_demo(env: dict[str, str], operator: OperatorMetrics, local: telemetry.EmbeddedMetrics,
             scraped: Callable[[str], None]) -> None:
    """Two WARP iterations of the pushed run, and the embedded runner's run fed from the same task outputs.
    Each phase lasts until `scraped(phase)` returns (Prometheus has stored it): a phase held for a fixed
    time can fall between two scrapes of a loaded Prometheus, and the phase timeline would miss it."""
    from kwarp.operator.admission import AdmissionWatch

    watch = AdmissionWatch(operator, since=0)
    stop = threading.Event()
    reconciler = threading.Thread(target=operate, args=(operator, stop), daemon=True)
    reconciler.start()
    try:
        for i in range(ITERATIONS):
            operator.observe_run(NAMESPACE, RUN, "Training", i)
            local.set_phase("Training", i)
            set_progress(operator, local, i, 0)
            admit_members(watch, i)
            members = [threading.Thread(target=train_member, args=(env, i, m)) for m in range(MEMBERS)]
            for m, t in enumerate(members):
                operator.jobs_created.labels(kind="train").inc()
                local.start_member(i, m, STEPS)
                t.start()
            for step in range(1, STEPS + 1):  # the runner reads the same records from its children
                time.sleep(STEP_SLEEP)
                for m in range(MEMBERS):
                    local.record_step(i, m, {**step_record(i, m, step), "steps": STEPS})
                set_progress(operator, local, i, step)
            for t in members:
                t.join()
            scraped("Training")
            operator.observe_run(NAMESPACE, RUN, "Merging", i)
            local.set_phase("Merging", i)
            operator.jobs_created.labels(kind="merge").inc()
            merge(env, i)
            local.record_merge(i, merge_summary(i, 4 << 20))
            scraped("Merging")
            operator.observe_run(NAMESPACE, RUN, "Evaluating", i)
            local.set_phase("Evaluating", i)
            operator.jobs_created.labels(kind="eval").inc()
            evaluate(env, i)
            local.record_eval(i, eval_doc(i))
            scraped("Evaluating")
        # spec.export: the exported policy's measured point, from status.export and from export.json.
        operator.jobs_created.labels(kind="export").inc()
        exported = export_record()
        operator.run.set_export(NAMESPACE, RUN, exported["eta"], exported["measured"]["reward"], exported["measured"]["kl"])
        local.record_export(exported)
        operator.observe_run(NAMESPACE, RUN, "Succeeded", ITERATIONS - 1)
        local.set_phase("Succeeded", ITERATIONS - 1)
        time.sleep(1.5)  # keep the operator's counters moving for a scrape or two
    finally:
        stop.set()
        reconciler.join()


@dataclass
class Stack:
    prometheus: Prometheus
    gateway: Pushgateway
    operator_url: str
    local_url: str
    finished: float


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from kwarp.operator.metrics import MetricsServer as OperatorEndpoint  # what `kwarp operator` serves

    srv = Servers(tmp_path_factory.mktemp("observability"))
    op_endpoint = OperatorEndpoint(0, host="127.0.0.1").start()
    operator = op_endpoint.metrics
    local = telemetry.EmbeddedMetrics(LOCAL_NAMESPACE, LOCAL_RUN)
    local_server = telemetry.serve(local.registry, 0, host="127.0.0.1")
    try:
        gw = srv.pushgateway()
        prom = srv.prometheus(
            {
                "pushgateway": ScrapeJob([gw.address], honor_labels=True),
                "kwarp-operator": ScrapeJob([f"127.0.0.1:{op_endpoint.port}"]),
                "kwarp-local": ScrapeJob([f"127.0.0.1:{local_server.port}"]),
            },
            rule_files=[str(ALERTS)],
        )
        # Scraping must run before the work does, or rate() would see only the final values.
        prom.wait_for('count(up == 1) == 3', timeout=30)
        def scraped(phase: str) -> None:
            for run in (RUN, LOCAL_RUN):
                prom.wait_for(f'kwarp_run_phase{{run="{run}", phase="{phase}"}} == 1')

        run_demo({**PUSH_ENV, "KWARP_PUSHGATEWAY": gw.address}, operator, local, scraped)
        prom.wait_for(f'kwarp_run_phase{{run="{RUN}", phase="Succeeded"}} == 1')
        prom.wait_for(f'kwarp_run_phase{{run="{LOCAL_RUN}", phase="Succeeded"}} == 1')
        prom.wait_for(
            f'count(kwarp_eval_front_reward{{run="{RUN}"}})', lambda r: finite_values(r) == [ITERATIONS * len(ETAS)]
        )
        yield Stack(prom, gw, f"http://127.0.0.1:{op_endpoint.port}/metrics", local_server.url, time.time())
    finally:
        op_endpoint.stop()
        local_server.close()
        srv.stop()


VARIABLES = {"datasource": "prometheus", "namespace": NAMESPACE, "run": RUN,
             "__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
LOCAL_VARIABLES = {**VARIABLES, "namespace": LOCAL_NAMESPACE, "run": LOCAL_RUN}
QUERIES = dashboard.panel_queries(json.loads(dashboard.render()))


@pytest.mark.parametrize("q", QUERIES, ids=[f"{q.panel}/{q.ref_id}" for q in QUERIES])
def test_every_dashboard_query_returns_data(stack: Stack, q: dashboard.PanelQuery) -> None:
    expr = dashboard.substitute(q.expr, VARIABLES)
    result = stack.prometheus.query(expr)
    assert finite_values(result), f"{q.panel} ({q.ref_id}): `{expr}` returned no finite value: {result}"


RUN_QUERIES = [q for q in QUERIES if "$run" in q.expr]


@pytest.mark.parametrize("q", RUN_QUERIES, ids=[f"{q.panel}/{q.ref_id}" for q in RUN_QUERIES])
def test_embedded_runner_feeds_every_run_panel(stack: Stack, q: dashboard.PanelQuery) -> None:
    """`kwarp run --metrics-port` serves the same series: each run panel works on one machine too."""
    expr = dashboard.substitute(q.expr, LOCAL_VARIABLES)
    assert finite_values(stack.prometheus.query(expr)), f"{q.panel} ({q.ref_id}): `{expr}` returned nothing"


def test_run_panels_see_only_their_run(stack: Stack) -> None:
    """The run variable isolates runs: the pushed run's members never show the embedded run's series."""
    for q in RUN_QUERIES:
        for r in stack.prometheus.query(dashboard.substitute(q.expr, VARIABLES)):
            assert r["metric"].get("run", RUN) == RUN


def test_front_queries_join_point_by_point(stack: Stack) -> None:
    """The xychart joins KL and reward rows on their labels: each (iteration, η) has exactly one of each."""
    front = [q for q in QUERIES if q.panel_type == "xychart"]
    assert {q.ref_id for q in front} == {"KL", "REWARD"}
    keyed = {}
    for q in front:
        rows = stack.prometheus.query(dashboard.substitute(q.expr, VARIABLES))
        keyed[q.ref_id] = {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1]) for r in rows
        }
    assert keyed["KL"].keys() == keyed["REWARD"].keys()
    points = {(dict(k)["iteration"], dict(k)["eta"]) for k in keyed["KL"]}
    assert points == {(str(i), eta_label(e)) for i in range(ITERATIONS) for e in ETAS}
    # Values arrive unchanged: iteration 1, η = 1 of eval_doc.
    key = next(k for k in keyed["REWARD"] if dict(k)["iteration"] == "1" and dict(k)["eta"] == eta_label(1.0))
    assert keyed["REWARD"][key] == pytest.approx(0.3 + 0.4 + 0.2)
    assert keyed["KL"][key] == pytest.approx(20.0)


def test_phase_timeline_decodes_the_phase(stack: Stack) -> None:
    result = stack.prometheus.query(dashboard.substitute(dashboard.phase_code_expr(), VARIABLES))
    assert [RUN_PHASES[int(float(r["value"][1])) - 1] for r in result] == ["Succeeded"]
    history = stack.prometheus.query_range(
        dashboard.substitute(dashboard.phase_code_expr(), VARIABLES), stack.finished - 60, stack.finished, 0.5
    )
    seen = [RUN_PHASES[int(float(v)) - 1] for _, v in history[0]["values"]]
    # Phases in the order the run went through them, each run of repeats collapsed.
    order = [p for n, p in enumerate(seen) if n == 0 or seen[n - 1] != p]
    assert order[-1] == "Succeeded" and {"Training", "Merging", "Evaluating"} <= set(order)


def test_admission_and_progress_panels_read_what_the_run_reported(stack: Stack) -> None:
    """The waits observed (20-46 s: admit_members) land between the histogram's 15 s and 60 s buckets, per queue;
    nothing waits at the end; both runs finished all their steps."""
    for q in (0.5, 0.95):
        rows = stack.prometheus.query(dashboard.substitute(dashboard.admission_wait_expr(q), VARIABLES))
        assert [r["metric"]["queue"] for r in rows] == [QUEUE]
        assert 15 <= float(rows[0]["value"][1]) <= 60
    waiting = stack.prometheus.query(f'kwarp_operator_admission_waiting_jobs{{namespace="{NAMESPACE}"}}')
    assert [(r["metric"]["queue"], float(r["value"][1])) for r in waiting] == [(QUEUE, 0.0)]
    for variables in (VARIABLES, LOCAL_VARIABLES):
        progress = stack.prometheus.query(dashboard.substitute('kwarp_run_progress_ratio{namespace="$namespace", '
                                                               'run="$run"}', variables))  # fmt: skip
        assert finite_values(progress) == [1.0]


def test_the_exported_policy_panel_reads_the_exported_point(stack: Stack) -> None:
    """The Deliverable row's stat shows export.json's η and measured reward and KL, from the operator
    (status.export) and from the embedded runner alike."""
    exported = export_record()
    want = {"ETA": exported["eta"], "REWARD": exported["measured"]["reward"], "KL": exported["measured"]["kl"]}
    panel = [q for q in QUERIES if q.panel == "Exported policy"]
    assert sorted(q.ref_id for q in panel) == sorted(want)
    for variables in (VARIABLES, LOCAL_VARIABLES):
        for q in panel:
            got = finite_values(stack.prometheus.query(dashboard.substitute(q.expr, variables)))
            assert got == [pytest.approx(want[q.ref_id])], (q.ref_id, variables)


def test_step_counters_and_histograms_arrive_whole(stack: Stack) -> None:
    prom = stack.prometheus
    steps = prom.query(f'sum by (iteration, member) (kwarp_trainer_steps_total{{run="{RUN}"}})')
    assert sorted(float(r["value"][1]) for r in steps) == [float(STEPS)] * ITERATIONS * MEMBERS
    count = prom.query(f'sum(kwarp_trainer_step_duration_seconds_count{{run="{RUN}"}})')
    assert finite_values(count) == [float(STEPS * ITERATIONS * MEMBERS)]
    angles = prom.query(f'sum by (iteration) (kwarp_merger_slerp_angle_degrees_count{{run="{RUN}"}})')
    assert sorted(finite_values(angles)) == [4.0, 4.0]
    bytes_total = prom.query(f'sum by (iteration) (kwarp_merger_processed_bytes_total{{run="{RUN}"}})')
    assert finite_values(bytes_total) == [float(4 << 20)] * ITERATIONS


def test_every_catalogue_metric_reaches_prometheus(stack: Stack) -> None:
    """Each family of the catalogue is exported by some component under its declared name and labels."""
    stored = stack.prometheus.query('count by (__name__) ({__name__=~"kwarp_.+"})')
    names = {r["metric"]["__name__"] for r in stored}
    expected = set(catalogue_by_series())
    assert expected <= names, f"never exported: {sorted(expected - names)}"
    unknown = {n for n in names if not n.endswith("_created")} - expected
    assert not unknown, f"exported but not in the catalogue: {sorted(unknown)}"
    for d in CATALOGUE:
        series = stack.prometheus.query(f"{d.series_names[0]}")
        for s in series:
            own = set(s["metric"]) - {"__name__", "job", "instance", "component", "le"}
            assert own == set(d.labels), f"{d.name}: labels {sorted(own)}, declared {sorted(d.labels)}"


def test_each_task_pushes_its_own_group(stack: Stack) -> None:
    groups = [g["labels"] for g in stack.gateway.groups() if g["labels"].get("run") == RUN]
    keys = sorted((g["component"], g["iteration"], g.get("member", "")) for g in groups)
    expected = sorted(
        [("trainer", str(i), str(m)) for i in range(ITERATIONS) for m in range(MEMBERS)]
        + [(c, str(i), "") for i in range(ITERATIONS) for c in ("merger", "eval")]
    )
    assert keys == expected
    assert all(g["job"] == telemetry.JOB and g["namespace"] == NAMESPACE for g in groups)


def test_alert_rules_load_in_prometheus(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {g["name"] for g in groups} == {"kwarp"}
    assert len(rules) >= 6
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # The rules evaluate on live data: the demo's Job failures fire, its healthy run raises nothing.
    deadline = time.monotonic() + 15
    while True:
        alerts = stack.prometheus.api("alerts")["alerts"]
        failures = [a for a in alerts if a["labels"]["alertname"] == "KwarpJobFailures" and a["state"] == "firing"]
        if failures or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(a["labels"]["kind"], a["labels"]["reason"]) for a in failures] == [("train", "BackoffLimitExceeded")]
    assert not [a for a in alerts if a["labels"].get("run") == RUN]


def test_embedded_metrics_count_each_step_once() -> None:
    local = telemetry.EmbeddedMetrics("ns", "r")
    record = step_record(0, 0, 1)
    assert local.record_step(0, 0, record)
    assert not local.record_step(0, 0, record)  # the same progress line again
    assert not local.record_step(0, 0, {"phase": "loading"})  # not a step record
    assert local.record_step(0, 0, {**step_record(0, 0, 2), "steps": 9})
    labels = member_labels("ns", "r", 0, 0)
    assert local.registry.get_sample_value("kwarp_trainer_steps_total", labels) == 2
    assert local.registry.get_sample_value("kwarp_trainer_steps_target", labels) == 9
    assert local.registry.get_sample_value("kwarp_trainer_step", labels) == 2


def test_render_script_draws_every_main_panel_from_prometheus(stack: Stack, tmp_path: Path) -> None:
    """scripts/render_dashboard.py (what produced docs/img/dashboard.png) finds data for each panel it draws."""
    import sys

    out = tmp_path / "dashboard.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_dashboard.py"), "--prometheus", stack.prometheus.url,
         "--namespace", NAMESPACE, "--run", RUN, "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict(line.rsplit(maxsplit=1) for line in proc.stdout.splitlines() if not line.startswith("wrote"))
    assert int(counts["KL-reward front per iteration"]) == ITERATIONS * len(ETAS)
    assert int(counts["Reward"]) == ITERATIONS * MEMBERS
    # The Progress and Deliverable rows: the run's one progress and time-left series, the exported η, reward, KL.
    assert (int(counts["Run progress"]), int(counts["Estimated time left"]), int(counts["Exported policy"])) == (1, 1, 3)
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 20_000


# --------------------------------------------------------------------------- the real trainer


TRAINER_REWARD = '''
def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def test_real_trainer_feeds_the_training_panels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kwarp train`'s own loop on a tiny random GPT-2 pushes through a real Pushgateway; Prometheus scrapes it
    and every dashboard query over trainer metrics answers for that run, with the values of metrics.jsonl."""
    import shutil

    import torch

    from kwarp.core.spec import parse
    from kwarp.trainer.train import train
    from tests.models import tiny_gpt2

    torch.set_num_threads(1)
    (tmp_path / "kwarp_obs_rewards.py").write_text(TRAINER_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("hello", "the cat", "once upon", "go")))
    base = tiny_gpt2(tmp_path / "sft")
    shutil.copytree(base, tmp_path / "store" / "r" / "base")
    steps = 5
    run = parse({
        "apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": "r"},
        "spec": {
            "policy": {"location": str(base), "dtype": "float32"},
            "reward": {"callable": "kwarp_obs_rewards:vowels"},
            "data": {"train": str(prompts), "eval": str(prompts)},
            "warp": {"iterations": 1, "policies": 1, "steps": steps},
            "training": {"batchSize": 2, "samplesPerPrompt": 2, "maxNewTokens": 6, "warmupSteps": 1,
                         "learningRate": 1e-3, "checkpointInterval": 10},
            "storage": {"url": str(tmp_path / "store")},
        },
    })  # fmt: skip
    srv = Servers(tmp_path)
    try:
        gw = srv.pushgateway()
        prom = srv.prometheus({"pushgateway": ScrapeJob([gw.address], honor_labels=True)})
        prom.wait_for("count(up == 1) == 1")
        monkeypatch.setenv("KWARP_PUSHGATEWAY", gw.address)
        monkeypatch.setenv("KWARP_PUSH_INTERVAL", "0.2")
        monkeypatch.setenv("KWARP_NAMESPACE", "team-b")
        # Slow the steps to a few scrapes each, so rate() sees the counters grow as it would in a real run.
        assert train(run, 0, 0, device="cpu", on_step=lambda record: time.sleep(0.6))
        prom.wait_for('kwarp_trainer_step{namespace="team-b", run="r"}', lambda r: finite_values(r) == [steps])

        variables = {**VARIABLES, "namespace": "team-b", "run": "r"}
        trainer_queries = [q for q in QUERIES if all(n.startswith("kwarp_trainer_") for n in
                                                     dashboard.metric_names(q.expr))]
        assert {q.panel for q in trainer_queries} >= {"Reward", "KL to anchor", "KL to init", "Step time",
                                                      "Tokens per second", "Member progress"}
        for q in trainer_queries:
            expr = dashboard.substitute(q.expr, variables)
            assert finite_values(prom.query(expr)), f"{q.panel} ({q.ref_id}): `{expr}` returned nothing"

        log = [json.loads(line) for line in
               (tmp_path / "store" / "r" / "iter-0" / "member-0" / "metrics.jsonl").read_text().splitlines()]
        reward = finite_values(prom.query('kwarp_trainer_reward{namespace="team-b", run="r"}'))
        assert reward == [pytest.approx(log[-1]["reward"])]
    finally:
        srv.stop()

