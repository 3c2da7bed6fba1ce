"""The metric catalogue: every Prometheus metric kwarp exports is defined here, and only here.

Naming follows Prometheus conventions: prefix `kwarp_`, base units (`_seconds`, `_bytes`), `_total` for
counters. Labels are `namespace`, `run`, `iteration`, `member` where they apply; nothing high-cardinality
(no step, no prompt, no pod name). Components build their metrics on a registry they own
(no global singleton), so several members can run in one process and tests stay isolated.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RUN_LABELS = ("namespace", "run")
MEMBER_LABELS = ("namespace", "run", "iteration", "member")
ITERATION_LABELS = ("namespace", "run", "iteration")

STEP_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class TrainerMetrics:
    """One WARP member's training metrics (labels: namespace, run, iteration, member)."""

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
    step_seconds: Histogram
    tokens_per_second: Gauge
    last_step_timestamp: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainerMetrics:
        L = MEMBER_LABELS
        return cls(
            reward=Gauge("kwarp_trainer_reward", "Mean reward of the step's completions", L, registry=registry),
            kl_anchor=Gauge("kwarp_trainer_kl_anchor", "Sequence KL estimate to the anchor (EMA or SFT)", L, registry=registry),
            kl_init=Gauge("kwarp_trainer_kl_init", "Sequence KL estimate to the iteration's initial policy", L, registry=registry),
            completion_tokens=Gauge("kwarp_trainer_completion_tokens", "Mean completion length in tokens", L, registry=registry),
            entropy=Gauge("kwarp_trainer_entropy", "Mean per-token entropy of the policy on its samples", L, registry=registry),
            loss=Gauge("kwarp_trainer_loss", "REINFORCE loss of the step", L, registry=registry),
            grad_norm=Gauge("kwarp_trainer_grad_norm", "Gradient norm before clipping", L, registry=registry),
            learning_rate=Gauge("kwarp_trainer_learning_rate", "Learning rate of the step", L, registry=registry),
            step=Gauge("kwarp_trainer_step", "Last completed optimiser step", L, registry=registry),
            steps_target=Gauge("kwarp_trainer_steps_target", "Steps T this member runs", L, registry=registry),
            steps_total=Counter("kwarp_trainer_steps", "Optimiser steps completed by this process", L, registry=registry),
            step_seconds=Histogram(
                "kwarp_trainer_step_duration_seconds", "Wall time of one training step", L,
                buckets=STEP_SECONDS_BUCKETS, registry=registry,
            ),
            tokens_per_second=Gauge("kwarp_trainer_tokens_per_second", "Generated tokens per second", L, registry=registry),
            last_step_timestamp=Gauge(
                "kwarp_trainer_last_step_timestamp_seconds", "Unix time of the last completed step", L, registry=registry
            ),
        )


@dataclass
class MergerMetrics:
    bytes_processed: Counter
    duration: Gauge
    angle: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MergerMetrics:
        L = ITERATION_LABELS
        return cls(
            bytes_processed=Counter(
                "kwarp_merger_processed_bytes", "Bytes read and written by the merge", L, registry=registry
            ),
            duration=Gauge("kwarp_merger_duration_seconds", "Wall time of the last merge", L, registry=registry),
            angle=Histogram(
                "kwarp_merger_slerp_angle_degrees", "Angle between task vectors, one observation per group", L,
                buckets=(10, 30, 45, 60, 75, 80, 85, 88, 90, 92, 95, 100, 120, 150, 180), registry=registry,
            ),
        )


@dataclass
class EvaluationMetrics:
    front_reward: Gauge
    front_kl: Gauge
    duration: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> EvaluationMetrics:
        L = (*ITERATION_LABELS, "eta")  # η takes the few values of the spec's grid: bounded cardinality
        return cls(
            front_reward=Gauge("kwarp_eval_front_reward", "Mean reward on eval prompts at LiTI η", L, registry=registry),
            front_kl=Gauge("kwarp_eval_front_kl", "KL to the SFT policy at LiTI η", L, registry=registry),
            duration=Gauge(
                "kwarp_eval_duration_seconds", "Wall time of the evaluation", ITERATION_LABELS, registry=registry
            ),
        )


@dataclass
class OperatorMetrics:
    runs: Gauge
    reconcile_seconds: Histogram
    reconcile_errors: Counter
    jobs_created: Counter
    job_failures: Counter
    retries: Counter
    iteration: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> OperatorMetrics:
        return cls(
            runs=Gauge("kwarp_operator_runs", "WarpRuns by phase", ("namespace", "phase"), registry=registry),
            reconcile_seconds=Histogram(
                "kwarp_operator_reconcile_duration_seconds", "Time of one reconcile of a WarpRun",
                buckets=RECONCILE_BUCKETS, registry=registry,
            ),
            reconcile_errors=Counter(
                "kwarp_operator_reconcile_errors", "Reconciles that raised", ("reason",), registry=registry
            ),
            jobs_created=Counter(
                "kwarp_operator_jobs_created", "Jobs created, by task kind", ("kind",), registry=registry
            ),
            job_failures=Counter(
                "kwarp_operator_job_failures", "Job attempts seen failed, by task kind and reason",
                ("kind", "reason"), registry=registry,
            ),
            retries=Counter("kwarp_operator_retries", "Retries started, by task kind", ("kind",), registry=registry),
            iteration=Gauge(
                "kwarp_run_iteration", "Current iteration of a run (0-based)", RUN_LABELS, registry=registry
            ),
        )
