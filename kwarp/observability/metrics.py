"""The metric catalogue: every Prometheus metric kwarp exports is defined here, and only here.

Naming follows Prometheus conventions: prefix `kwarp_`, base units (`_seconds`, `_bytes`), `_total` for
counters. Labels are `namespace`, `run`, `iteration`, `member` where they apply; nothing high-cardinality
(no step, no prompt, no pod name). Components build their metrics on a registry they own
(no global singleton), so several members can run in one process and tests stay isolated.

Each metric family is declared once as a `MetricDef` (pure data) in its group's `DEFS`; `create(registry)`
builds the group from them and `CATALOGUE` lists them all, so the docs, the Grafana dashboard's tests and
the alert rules' tests check against the same declarations the components export.

The `record_*` methods map the files the tasks write (`metrics.jsonl`, `merge.json`, `eval.json`, see
docs/internals.md) onto the metrics, so a component and the embedded runner, which replays those files,
export identical series.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RUN_LABELS = ("namespace", "run")
MEMBER_LABELS = ("namespace", "run", "iteration", "member")
ITERATION_LABELS = ("namespace", "run", "iteration")
FRONT_LABELS = (*ITERATION_LABELS, "eta")  # η takes the few values of the spec's grid: bounded cardinality
QUEUE_LABELS = ("namespace", "queue")  # a Kueue LocalQueue: few per namespace

STEP_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Angles between task vectors crowd near 90° in high dimension (the paper's observation), hence the fine
# buckets there.
ANGLE_BUCKETS = (10, 30, 45, 60, 75, 80, 85, 88, 90, 92, 95, 100, 120, 150, 180)
# Kueue admission waits: the API's timestamps have one-second resolution; a Job may wait days for GPUs.
ADMISSION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

# Task kinds of kwarp.core.plan.TaskKind: the operator's per-kind counters start at 0 for each, so that rate()
# and increase() see a kind's first Job.
TASK_KINDS = ("prepare", "train", "merge", "eval", "export")

# The phases a WarpRun reports (kwarp.core.status.WarpRunStatus.phase), in the order of their dashboard codes.
RUN_PHASES = ("Pending", "Training", "Merging", "Evaluating", "Succeeded", "Failed", "Suspended")

Kind = Literal["gauge", "counter", "histogram"]
Labels = Mapping[str, str]


@dataclass(frozen=True)
class MetricDef:
    """One metric family: what a component exports and what the dashboard and alert rules may query."""

    name: str  # the family name as exposed; a counter's ends in _total
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name.startswith("kwarp_"):
            raise ValueError(f"metric {self.name}: names start with kwarp_")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"metric {self.name}: counters, and only counters, end in _total")
        if (self.kind == "histogram") != (self.buckets is not None):
            raise ValueError(f"metric {self.name}: histograms, and only histograms, declare buckets")

    @property
    def series_names(self) -> tuple[str, ...]:
        """Names of the samples a scrape shows (histograms expose _bucket, _sum and _count)."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)

    def build(self, registry: CollectorRegistry) -> Gauge | Counter | Histogram:
        if self.kind == "gauge":
            return Gauge(self.name, self.help, self.labels, registry=registry)
        if self.kind == "counter":
            # prometheus_client appends _total itself: give it the stem so the exposed name is self.name.
            return Counter(self.name.removesuffix("_total"), self.help, self.labels, registry=registry)
        return Histogram(self.name, self.help, self.labels, buckets=self.buckets or (), registry=registry)


def _build(cls: type, registry: CollectorRegistry, **extra: Any) -> Any:
    return cls(**{name: d.build(registry) for name, d in cls.DEFS.items()}, **extra)


def member_labels(namespace: str, run: str, iteration: int, member: int) -> dict[str, str]:
    return {"namespace": namespace, "run": run, "iteration": str(iteration), "member": str(member)}


def iteration_labels(namespace: str, run: str, iteration: int) -> dict[str, str]:
    return {"namespace": namespace, "run": run, "iteration": str(iteration)}


def eta_label(eta: float) -> str:
    """η as a label value: shortest exact form (0.3, not 0.30000000000000004), so the grid stays a few values."""
    return repr(round(float(eta), 6))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class TrainerMetrics:
    """One WARP member's training metrics (labels: namespace, run, iteration, member)."""

    DEFS: ClassVar[dict[str, MetricDef]] = {
        "reward": MetricDef("kwarp_trainer_reward", "gauge", "Mean reward of the step's completions", MEMBER_LABELS),
        "kl_anchor": MetricDef(
            "kwarp_trainer_kl_anchor", "gauge", "Sequence KL estimate to the anchor (EMA or SFT), in nats", MEMBER_LABELS
        ),
        "kl_init": MetricDef(
            "kwarp_trainer_kl_init", "gauge", "Sequence KL estimate to the iteration's initial policy, in nats",
            MEMBER_LABELS,
        ),
        "completion_tokens": MetricDef(
            "kwarp_trainer_completion_tokens", "gauge", "Mean completion length in tokens", MEMBER_LABELS
        ),
        "entropy": MetricDef(
            "kwarp_trainer_entropy", "gauge", "Mean per-token entropy of the policy on its samples, in nats",
            MEMBER_LABELS,
        ),
        "loss": MetricDef("kwarp_trainer_loss", "gauge", "REINFORCE loss of the step", MEMBER_LABELS),
        "grad_norm": MetricDef("kwarp_trainer_grad_norm", "gauge", "Gradient norm before clipping", MEMBER_LABELS),
        "learning_rate": MetricDef("kwarp_trainer_learning_rate", "gauge", "Learning rate of the step", MEMBER_LABELS),
        "step": MetricDef("kwarp_trainer_step", "gauge", "Last completed optimiser step", MEMBER_LABELS),
        "steps_target": MetricDef("kwarp_trainer_steps_target", "gauge", "Steps T this member runs", MEMBER_LABELS),
        "steps_total": MetricDef(
            "kwarp_trainer_steps_total", "counter",
            "Training steps completed by this process (skipped non-finite steps included)", MEMBER_LABELS,
        ),
        "nonfinite_steps": MetricDef(
            "kwarp_trainer_nonfinite_steps_total", "counter",
            "Steps skipped because their loss or gradient was not finite (no optimiser or EMA update)", MEMBER_LABELS,
        ),
        "step_seconds": MetricDef(
            "kwarp_trainer_step_duration_seconds", "histogram", "Wall time of one training step", MEMBER_LABELS,
            buckets=STEP_SECONDS_BUCKETS,
        ),
        "tokens_per_second": MetricDef(
            "kwarp_trainer_tokens_per_second", "gauge", "Generated tokens per second in the last step", MEMBER_LABELS
        ),
        "last_step_timestamp": MetricDef(
            "kwarp_trainer_last_step_timestamp_seconds", "gauge", "Unix time of the last completed step", MEMBER_LABELS
        ),
    }

    reward: Gauge
    kl_anchor: Gauge
    kl_init: Gauge
    completion_tokens: Gauge
    entropy: Gauge
    loss: Gauge
    grad_norm: Gauge
    learning_rate: Gauge
    step: Gauge
    steps_target: Gauge
    steps_total: Counter
    nonfinite_steps: Counter
    step_seconds: Histogram
    tokens_per_second: Gauge
    last_step_timestamp: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainerMetrics:
        return _build(cls, registry)

    def start(self, labels: Labels, steps_target: int, step: int = 0) -> None:
        """A member starts (or resumes at `step`): the target is known before the first step ends."""
        self.steps_target.labels(**labels).set(steps_target)
        self.step.labels(**labels).set(step)
        # Expose the counter and the histogram at 0 now, so rate() sees the first step.
        self.steps_total.labels(**labels)
        self.nonfinite_steps.labels(**labels)
        self.step_seconds.labels(**labels)

    # metrics.jsonl key -> gauge field; keys absent or non-finite in a record leave the gauge as it was
    _GAUGES: ClassVar[dict[str, str]] = {
        "reward": "reward",
        "kl_anchor": "kl_anchor",
        "kl_init": "kl_init",
        "completion_tokens": "completion_tokens",
        "entropy": "entropy",
        "loss": "loss",
        "grad_norm": "grad_norm",
        "lr": "learning_rate",
        "tokens_per_second": "tokens_per_second",
        "step": "step",
    }

    def record_step(self, labels: Labels, record: Mapping[str, Any]) -> None:
        """Record one line of metrics.jsonl (the trainer's step record, docs/internals.md)."""
        for key, attr in self._GAUGES.items():
            value = _finite(record.get(key))
            if value is not None:
                getattr(self, attr).labels(**labels).set(value)
        self.steps_total.labels(**labels).inc()
        if record.get("nonfinite"):  # trainer/guards.py NONFINITE_FIELD: a skipped step
            self.nonfinite_steps.labels(**labels).inc()
        seconds = _finite(record.get("step_seconds"))
        if seconds is not None and seconds >= 0:
            self.step_seconds.labels(**labels).observe(seconds)
        stamp = _finite(record.get("time"))
        self.last_step_timestamp.labels(**labels).set(stamp if stamp is not None else time.time())


@dataclass
class MergerMetrics:
    """One merge (SLERP of the members, then LiTI) per iteration (labels: namespace, run, iteration)."""

    DEFS: ClassVar[dict[str, MetricDef]] = {
        "bytes_processed": MetricDef(
            "kwarp_merger_processed_bytes_total", "counter", "Bytes read and written by the merge", ITERATION_LABELS
        ),
        "duration": MetricDef(
            "kwarp_merger_duration_seconds", "gauge", "Wall time of the last completed merge", ITERATION_LABELS
        ),
        "angle": MetricDef(
            "kwarp_merger_slerp_angle_degrees", "histogram",
            "Angle between the members' task vectors, one observation per SLERP group", ITERATION_LABELS,
            buckets=ANGLE_BUCKETS,
        ),
    }

    bytes_processed: Counter
    duration: Gauge
    angle: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MergerMetrics:
        return _build(cls, registry)

    def record_angles(self, labels: Labels, angles_deg: Iterable[float]) -> None:
        for angle in angles_deg:
            value = _finite(angle)
            if value is not None:
                self.angle.labels(**labels).observe(value)

    def record_merge(self, labels: Labels, summary: Mapping[str, Any], *, count_bytes: bool = True) -> None:
        """Record a finished merge from its merge.json. A merger that already counted bytes while streaming
        passes count_bytes=False."""
        if count_bytes:
            self.bytes_processed.labels(**labels).inc(max(0.0, _finite(summary.get("bytes")) or 0.0))
        seconds = _finite(summary.get("seconds"))
        if seconds is not None:
            self.duration.labels(**labels).set(seconds)
        self.record_angles(labels, (g.get("angle_deg") for g in summary.get("groups", [])))


@dataclass
class EvaluationMetrics:
    """The Pareto front of an iteration: reward and KL to θ_sft along the LiTI path (labels + eta)."""

    DEFS: ClassVar[dict[str, MetricDef]] = {
        "front_reward": MetricDef(
            "kwarp_eval_front_reward", "gauge", "Mean reward on the eval prompts at LiTI η", FRONT_LABELS
        ),
        "front_kl": MetricDef(
            "kwarp_eval_front_kl", "gauge", "KL to the SFT policy on the eval prompts at LiTI η, in nats", FRONT_LABELS
        ),
        "duration": MetricDef(
            "kwarp_eval_duration_seconds", "gauge", "Wall time of the evaluation", ITERATION_LABELS
        ),
    }

    front_reward: Gauge
    front_kl: Gauge
    duration: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> EvaluationMetrics:
        return _build(cls, registry)

    def record_point(self, labels: Labels, eta: float, reward: float, kl: float) -> None:
        point = {**labels, "eta": eta_label(eta)}
        self.front_reward.labels(**point).set(reward)
        self.front_kl.labels(**point).set(kl)

    def record_eval(self, labels: Labels, evaluation: Mapping[str, Any]) -> None:
        """Record an iteration's eval.json: one (reward, KL) pair per η of the front."""
        for p in evaluation.get("front", []):
            reward, kl = _finite(p.get("reward")), _finite(p.get("kl"))
            if reward is not None and kl is not None:
                self.record_point(labels, p["eta"], reward, kl)
        seconds = _finite(evaluation.get("seconds"))
        if seconds is not None:
            self.duration.labels(**labels).set(seconds)


@dataclass
class RunMetrics:
    """Where a run stands (labels: namespace, run): its phase as one 0/1 series per phase (the
    kube-state-metrics pattern, so a query can join on a phase) and its current iteration.

    The operator exports these for every WarpRun; the embedded runner for its one run.
    """

    DEFS: ClassVar[dict[str, MetricDef]] = {
        "phase": MetricDef(
            "kwarp_run_phase", "gauge", "1 for the WarpRun's current phase, 0 for the others", (*RUN_LABELS, "phase")
        ),
        "iteration": MetricDef(
            "kwarp_run_iteration", "gauge", "Current iteration of a run (0-based)", RUN_LABELS
        ),
        "progress": MetricDef(
            "kwarp_run_progress_ratio", "gauge", "Training steps done over the run's total, from 0 to 1", RUN_LABELS
        ),
        "completion": MetricDef(
            "kwarp_run_estimated_completion_timestamp_seconds", "gauge",
            "Unix time at which the run should end at its measured rates (absent while none is measured)",
            RUN_LABELS,
        ),
        # The exported policy (spec.export): its η on the final front and what it measured when written.
        "export_eta": MetricDef(
            "kwarp_run_export_eta", "gauge", "LiTI η of the policy the run exported (spec.export)", RUN_LABELS
        ),
        "export_reward": MetricDef(
            "kwarp_run_export_reward", "gauge",
            "Mean reward of the exported policy, measured on the eval prompts when it was written", RUN_LABELS,
        ),
        "export_kl": MetricDef(
            "kwarp_run_export_kl", "gauge",
            "KL of the exported policy to the SFT policy, in nats, measured when it was written", RUN_LABELS,
        ),
    }

    phase: Gauge
    iteration: Gauge
    progress: Gauge
    completion: Gauge
    export_eta: Gauge
    export_reward: Gauge
    export_kl: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RunMetrics:
        return _build(cls, registry)

    def set(self, namespace: str, run: str, phase: str, iteration: int | None) -> None:
        if phase not in RUN_PHASES:
            raise ValueError(f"unknown run phase '{phase}'; one of {', '.join(RUN_PHASES)}")
        for p in RUN_PHASES:
            self.phase.labels(namespace=namespace, run=run, phase=p).set(1 if p == phase else 0)
        if iteration is not None:
            self.iteration.labels(namespace=namespace, run=run).set(iteration)

    def set_progress(self, namespace: str, run: str, steps_done: int, steps_total: int,
                     completion: float | None) -> None:  # fmt: skip
        """Steps done / total, and the estimated end of training (unix time). An ETA that is not known
        (no measured rate yet, a suspended or failed run) removes the series rather than showing a guess."""
        ratio = steps_done / steps_total if steps_total > 0 else 1.0
        self.progress.labels(namespace=namespace, run=run).set(min(1.0, max(0.0, ratio)))
        if completion is None:
            _remove(self.completion, namespace, run)
        else:
            self.completion.labels(namespace=namespace, run=run).set(completion)

    def set_export(self, namespace: str, run: str, eta: float, reward: float | None, kl: float | None) -> None:
        """The exported policy's point (status.export, or the embedded run's export.json). A measure that
        is missing or not finite leaves its series unset rather than showing a number it did not measure."""
        self.export_eta.labels(namespace=namespace, run=run).set(eta)
        for gauge, value in ((self.export_reward, reward), (self.export_kl, kl)):
            if value is not None and math.isfinite(value):
                gauge.labels(namespace=namespace, run=run).set(value)
            else:
                _remove(gauge, namespace, run)

    def forget(self, namespace: str, run: str) -> None:
        """Drop a deleted run's series, so that it leaves the dashboards and alerts."""
        for p in RUN_PHASES:
            _remove(self.phase, namespace, run, p)
        for gauge in (self.iteration, self.progress, self.completion, self.export_eta, self.export_reward,
                      self.export_kl):  # fmt: skip
            _remove(gauge, namespace, run)


def _remove(metric: Gauge, *labelvalues: str) -> None:
    try:
        metric.remove(*labelvalues)
    except KeyError:  # never set: nothing to drop
        pass


@dataclass
class OperatorMetrics:
    """The operator's own metrics, plus the run state of every WarpRun it reconciles (RunMetrics)."""

    DEFS: ClassVar[dict[str, MetricDef]] = {
        "runs": MetricDef("kwarp_operator_runs", "gauge", "WarpRuns by phase", ("namespace", "phase")),
        "reconcile_seconds": MetricDef(
            "kwarp_operator_reconcile_duration_seconds", "histogram", "Time of one reconcile of a WarpRun", (),
            buckets=RECONCILE_BUCKETS,
        ),
        "reconcile_errors": MetricDef(
            "kwarp_operator_reconcile_errors_total", "counter", "Reconciles that raised, by reason", ("reason",)
        ),
        "jobs_created": MetricDef(
            "kwarp_operator_jobs_created_total", "counter", "Jobs created, by task kind", ("kind",)
        ),
        "job_failures": MetricDef(
            "kwarp_operator_job_failures_total", "counter", "Job attempts seen failed, by task kind and reason",
            ("kind", "reason"),
        ),
        "retries": MetricDef("kwarp_operator_retries_total", "counter", "Retries started, by task kind", ("kind",)),
        "admission_wait": MetricDef(
            "kwarp_operator_admission_wait_seconds", "histogram",
            "Seconds from a Kueue Job's creation (suspended) to its admission (Kueue unsuspends it: the Job's "
            "startTime), one observation per Job", QUEUE_LABELS, buckets=ADMISSION_BUCKETS,
        ),
        "waiting": MetricDef(
            "kwarp_operator_admission_waiting_jobs", "gauge", "Jobs of WarpRuns waiting for Kueue's admission",
            QUEUE_LABELS,
        ),
    }

    runs: Gauge
    reconcile_seconds: Histogram
    reconcile_errors: Counter
    jobs_created: Counter
    job_failures: Counter
    retries: Counter
    admission_wait: Histogram
    waiting: Gauge
    run: RunMetrics
    _phases: dict[tuple[str, str], str] = field(default_factory=dict, init=False, repr=False)
    # Jobs waiting for admission per run and queue: the gauge sums them, and a deleted run's share goes.
    _waiting: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[str, dict[str, int]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> OperatorMetrics:
        metrics = _build(cls, registry, run=RunMetrics.create(registry))
        for kind in TASK_KINDS:
            metrics.jobs_created.labels(kind=kind)
            metrics.retries.labels(kind=kind)
        return metrics

    @property
    def iteration(self) -> Gauge:
        """kwarp_run_iteration (kept here for callers written before RunMetrics existed)."""
        return self.run.iteration

    def observe_run(self, namespace: str, run: str, phase: str, iteration: int | None) -> None:
        """Call after each reconcile with the status it wrote: sets the run's phase and iteration series
        and keeps the runs-by-phase counts of its namespace consistent with them. Constant time: only
        a phase change moves the counts (recounting every run made each reconcile cost O(runs))."""
        with self._lock:
            self.run.set(namespace, run, phase, iteration)
            old = self._phases.get((namespace, run))
            if old == phase:
                return
            self._phases[(namespace, run)] = phase
            self._move(namespace, old, phase)

    def observe_waiting(self, namespace: str, run: str, queues: Mapping[str, int]) -> None:
        """A run's Jobs waiting for admission now, by LocalQueue: the namespace's per-queue gauge moves by
        the difference. A queue keeps its series (at 0) once seen: queues are few, runs are not."""
        with self._lock:
            old = self._waiting.pop((namespace, run), {})
            new = {q: n for q, n in queues.items() if n > 0}
            if new:
                self._waiting[(namespace, run)] = new
            self._recount_waiting(namespace, set(old) | set(new))

    def _recount_waiting(self, namespace: str, queues: set[str]) -> None:
        for queue in queues:
            total = sum(w.get(queue, 0) for (ns, _), w in self._waiting.items() if ns == namespace)
            self.waiting.labels(namespace=namespace, queue=queue).set(total)

    def forget_run(self, namespace: str, run: str) -> None:
        """Call from the delete handler: the run's series go, and the counts drop it."""
        with self._lock:
            self.run.forget(namespace, run)
            old = self._phases.pop((namespace, run), None)
            self._move(namespace, old, None)
            waiting = self._waiting.pop((namespace, run), {})
            self._recount_waiting(namespace, set(waiting))

    def _move(self, namespace: str, old: str | None, new: str | None) -> None:
        counts = self._counts.setdefault(namespace, dict.fromkeys(RUN_PHASES, 0))
        if old is not None:
            counts[old] -= 1
        if new is not None:
            counts[new] += 1
        for p in RUN_PHASES:  # every phase has a series, 0 included (the queries and alerts join on them)
            self.runs.labels(namespace=namespace, phase=p).set(counts[p])


METRIC_GROUPS: tuple[type, ...] = (TrainerMetrics, MergerMetrics, EvaluationMetrics, RunMetrics, OperatorMetrics)

# Every family kwarp exports, in catalogue order: the single list docs, dashboard and alert tests use.
CATALOGUE: tuple[MetricDef, ...] = tuple(d for group in METRIC_GROUPS for d in group.DEFS.values())


def catalogue_by_series() -> dict[str, MetricDef]:
    """Sample name as stored in Prometheus (e.g. kwarp_trainer_step_duration_seconds_bucket) -> its family."""
    return {s: d for d in CATALOGUE for s in d.series_names}

