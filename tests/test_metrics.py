"""The metric classes and their catalogue, in process (no Prometheus): names follow Prometheus' conventions,
each metric is declared once, label values come from the plan's vocabularies, and the operator's per-run
and per-queue series follow runs across phases and deletions. tests/test_observability.py carries the
same classes through the real export paths to a real Prometheus."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from kwarp.observability.metrics import CATALOGUE, METRIC_GROUPS, RUN_PHASES, OperatorMetrics


def test_waiting_jobs_sum_over_runs_and_a_deleted_run_takes_its_series_and_its_share() -> None:
    """Per-run series stay bounded by the runs that exist; the per-queue gauge never counts a deleted run."""
    registry = CollectorRegistry()
    metrics = OperatorMetrics.create(registry)
    queue = {"namespace": "ns", "queue": "gpus"}
    metrics.observe_waiting("ns", "a", {"gpus": 2})
    metrics.observe_waiting("ns", "b", {"gpus": 1, "cpus": 1})
    assert registry.get_sample_value("kwarp_operator_admission_waiting_jobs", queue) == 3
    metrics.observe_waiting("ns", "a", {"gpus": 1})  # one of a's Jobs admitted
    assert registry.get_sample_value("kwarp_operator_admission_waiting_jobs", queue) == 2
    for run in ("a", "b"):
        metrics.observe_run("ns", run, "Training", 0)
        metrics.run.set_progress("ns", run, 3, 12, 1_800_000_000.0)
    assert registry.get_sample_value("kwarp_run_progress_ratio", {"namespace": "ns", "run": "a"}) == 0.25

    metrics.forget_run("ns", "a")
    assert registry.get_sample_value("kwarp_operator_admission_waiting_jobs", queue) == 1
    left = {s.labels.get("run") for f in registry.collect() for s in f.samples if "run" in s.labels}
    assert left == {"b"}
    metrics.run.set_progress("ns", "b", 3, 12, None)  # the estimate is gone (suspended): no stale ETA
    assert registry.get_sample_value("kwarp_run_estimated_completion_timestamp_seconds",
                                     {"namespace": "ns", "run": "b"}) is None  # fmt: skip
    metrics.forget_run("ns", "b")
    assert registry.get_sample_value("kwarp_operator_admission_waiting_jobs", {**queue, "queue": "cpus"}) == 0


def test_catalogue_metric_names_follow_prometheus_conventions() -> None:
    for d in CATALOGUE:
        assert d.name.startswith("kwarp_")
        assert (d.kind == "counter") == d.name.endswith("_total")
        assert (d.help[0].isupper() or d.help[0].isdigit()) and not d.help.endswith(".")
        if "seconds" in d.name or "duration" in d.name:
            assert "_seconds" in d.name, d.name
        assert not {"step", "pod", "prompt"} & set(d.labels), f"{d.name}: high-cardinality label"


def test_phases_and_task_kinds_match_the_plan() -> None:
    """The metric label values come from the plan's own vocabularies."""
    from typing import get_args

    from kwarp.core import plan
    from kwarp.observability.metrics import TASK_KINDS

    assert set(RUN_PHASES) == set(get_args(plan.Phase))
    assert set(TASK_KINDS) == set(get_args(plan.TaskKind))


@pytest.mark.parametrize("group", METRIC_GROUPS, ids=lambda g: g.__name__)
def test_each_metric_field_is_declared_once(group: type) -> None:
    """DEFS and the dataclass fields name the same metrics, and create() fills each with its declaration."""
    metric_fields = {f.name for f in dataclasses.fields(group) if f.type in ("Gauge", "Counter", "Histogram")}
    assert metric_fields == set(group.DEFS)
    built = group.create(CollectorRegistry())
    for name, d in group.DEFS.items():
        metric = getattr(built, name)
        assert type(metric).__name__.lower() == d.kind
        assert [m.name for m in metric.describe()] == [d.name.removesuffix("_total")]


def test_runs_by_phase_follow_each_run_across_phases_and_deletions() -> None:
    registry = CollectorRegistry()
    operator = OperatorMetrics.create(registry)
    for run, phase in [("a", "Training"), ("b", "Training"), ("a", "Training"), ("a", "Merging"), ("c", "Pending"),
                       ("b", "Succeeded"), ("x", "Training")]:  # fmt: skip
        operator.observe_run("ns" if run != "x" else "other", run, phase, 0)
    counts = {p: registry.get_sample_value("kwarp_operator_runs", {"namespace": "ns", "phase": p}) for p in RUN_PHASES}
    assert counts == {p: {"Merging": 1.0, "Pending": 1.0, "Succeeded": 1.0}.get(p, 0.0) for p in RUN_PHASES}
    operator.forget_run("ns", "a")
    operator.forget_run("ns", "gone")  # never seen: nothing moves
    assert registry.get_sample_value("kwarp_operator_runs", {"namespace": "ns", "phase": "Merging"}) == 0
    assert registry.get_sample_value("kwarp_operator_runs", {"namespace": "other", "phase": "Training"}) == 1
