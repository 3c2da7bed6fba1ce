"""Progress and estimated completion of a run, from its members' metrics. Pure: no I/O, no clock.

    read_step_log(metrics.jsonl bytes) -> StepLog      steps done, last reward and KL, measured step rate
    run_progress(spec, done, logs)     -> RunProgress  steps done / total, percent, seconds remaining

A trainer logs one row per step (`step` = steps done, `reward`, `kl_anchor`, `time`) and uploads its
metrics.jsonl with each checkpoint, so what the store shows trails the trainer by at most
`training.checkpointInterval` steps. The remaining time counts training only: the M members of an
iteration run side by side, iterations one after another, each member at the measured rate (the median
over members of their recent rates); merges and evaluations are not in it (they take seconds to minutes
against hours of training at the paper's scale).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from kwarp.core.plan import Task
from kwarp.core.spec import WarpRunSpec

RATE_WINDOW = 50  # rows: the rate is measured over the latest ones (a resumed member's pause drops out)


@dataclass(frozen=True)
class StepLog:
    """What one member's metrics.jsonl says about its progress."""

    step: int = 0  # steps done: the last row's `step`
    reward: float | None = None  # training reward at that step
    kl: float | None = None  # KL to the anchor at that step
    rate: float | None = None  # steps per second over the latest rows; None with fewer than two timed rows


@dataclass(frozen=True)
class RunProgress:
    steps_done: int
    steps_total: int
    steps_per_second: float | None  # of one member
    remaining_seconds: float | None  # None until some member has a measured rate

    @property
    def percent(self) -> float:
        return round(100.0 * self.steps_done / self.steps_total, 1) if self.steps_total else 100.0


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def read_step_log(metrics_jsonl: bytes | None) -> StepLog:
    rows: list[tuple[int, float | None, dict]] = []
    for line in (metrics_jsonl or b"").decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of an upload in progress, or not a row
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
            rows.append((row["step"], _number(row.get("time")), row))
    if not rows:
        return StepLog()
    step, _, last = rows[-1]
    timed = [(s, t) for s, t, _ in rows[-RATE_WINDOW:] if t is not None]
    rate = None
    if len(timed) >= 2 and timed[-1][1] > timed[0][1] and timed[-1][0] > timed[0][0]:
        rate = (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])
    return StepLog(step=step, reward=_number(last.get("reward")), kl=_number(last.get("kl_anchor")), rate=rate)


def run_progress(spec: WarpRunSpec, done: Collection[Task], logs: Mapping[tuple[int, int], StepLog]) -> RunProgress:
    """Steps done over all members of all iterations, and the training time left at the measured rate."""
    rates = [log.rate for log in logs.values() if log.rate]
    rate = statistics.median(rates) if rates else None
    steps_done = steps_total = 0
    remaining_steps = 0  # along the critical path: the slowest member of each iteration, iterations in turn
    for i in range(spec.warp.iterations):
        total = spec.warp.steps_for(i)
        left = 0
        for m in range(spec.warp.policies):
            log = logs.get((i, m))
            did = total if Task.train(i, m) in done else min(log.step if log else 0, total)
            steps_done += did
            steps_total += total
            left = max(left, total - did)
        remaining_steps += left
    remaining = remaining_steps / rate if rate else (0.0 if remaining_steps == 0 else None)
    return RunProgress(steps_done=steps_done, steps_total=steps_total, steps_per_second=rate,
                       remaining_seconds=remaining)  # fmt: skip
