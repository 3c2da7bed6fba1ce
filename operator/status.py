"""The WarpRun status, built from what was observed. Pure: no I/O, the clock is an argument.

The reconcile gathers the inputs (the effective spec, the Jobs, what the store holds, the plan's
actions) and this module turns them into a `WarpRunStatus`; `status_patch` then says what to send,
and nothing is sent when nothing changed. What the store shows is the truth about finished work;
the previous status only carries what cannot be observed again (when the run started, failure
counts of attempts whose Jobs are gone, the accepted spec, condition transition times).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kwarp.core.plan import Action, Fail, Observed, Progress, Task, TaskJobs, progress
from kwarp.core.spec import WarpRunSpec
from kwarp.core.status import (
    Condition,
    ExportStatus,
    IterationFront,
    MemberStatus,
    ParetoPoint,
    RunProgress,
    TaskFailures,
    WarpRunStatus,
)
from kwarp.store import layout

from . import conditions as C
from .observe import ACTIVE_STATES, Failures, JobView, attempt_failed
from .progress import ProgressView

MAX_MEMBERS = 256  # newest first kept: a status must stay far below the API server's object size limit


@dataclass(frozen=True)
class MemberResult:
    reward: float | None = None
    kl: float | None = None


@dataclass(frozen=True)
class Observation:
    done: frozenset[Task] = frozenset()
    attempts: Mapping[Task, list[JobView]] = field(default_factory=dict)
    jobs: Mapping[Task, TaskJobs] = field(default_factory=dict)
    fronts: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # eval.json by iteration
    members: Mapping[tuple[int, int], MemberResult] = field(default_factory=dict)
    progress: ProgressView | None = None  # step logs of the members, as last read from the store
    export: Mapping[str, Any] | None = None  # <run>/export.json, once the export is done


@dataclass(frozen=True)
class SpecCheck:
    invalid: str | None = None  # the SpecError message when the current document does not validate
    refused: tuple[str, ...] = ()  # fields of a running run that changed and may not
    forbidden: bool = False  # `invalid` says what the operator's guardrails forbid


def previous_status(raw: Mapping[str, Any] | None) -> WarpRunStatus:
    """The status as stored; what does not parse (an older operator, a hand edit) is dropped field by field."""
    if not raw:
        return WarpRunStatus()
    try:
        return WarpRunStatus.model_validate(dict(raw))
    except ValueError:
        kept = {}
        for name, info in WarpRunStatus.model_fields.items():
            key = info.alias or name
            if key in raw:
                try:
                    WarpRunStatus.model_validate({key: raw[key]})
                except ValueError:
                    continue
                kept[key] = raw[key]
        return WarpRunStatus.model_validate(kept)


def recorded_failures(status: WarpRunStatus) -> dict[Task, Failures]:
    """Failure counts the status kept, per task (they outlive the Jobs)."""
    out = {}
    for task_id, rec in status.failures.items():
        try:
            out[Task.parse_id(task_id)] = Failures(rec.count, rec.reason)
        except ValueError:
            continue
    return out


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def front_points(report: Mapping[str, Any]) -> list[ParetoPoint]:
    points = []
    for p in report.get("front") or []:
        if not isinstance(p, Mapping):
            continue
        eta, reward, kl = _float(p.get("eta")), _float(p.get("reward")), _float(p.get("kl"))
        if eta is None or reward is None or kl is None:
            continue
        points.append(
            ParetoPoint(eta=eta, reward=reward, kl=kl, reward_stderr=_float(p.get("reward_stderr")),
                        kl_stderr=_float(p.get("kl_stderr")))
        )  # fmt: skip
    return sorted(points, key=lambda p: p.eta)


def point_at(points: Sequence[ParetoPoint], eta: float) -> ParetoPoint | None:
    """The front's point at η (the nearest evaluated η when the grid lacks it)."""
    return min(points, key=lambda p: abs(p.eta - eta)) if points else None


def export_status(record: Mapping[str, Any] | None) -> ExportStatus | None:
    """status.export from <run>/export.json (None when absent or unreadable)."""
    if not record or not isinstance(record.get("location"), str) or _float(record.get("eta")) is None:
        return None
    measured = record.get("measured") if isinstance(record.get("measured"), Mapping) else {}
    request = record.get("request") if isinstance(record.get("request"), Mapping) else {}
    within = record.get("within_budget")
    return ExportStatus(
        location=record["location"], eta=_float(record["eta"]), kl_budget=_float(request.get("kl_budget")),
        **{k: _float(measured.get(k)) for k in ("reward", "reward_stderr", "kl", "kl_stderr", "gold", "gold_stderr")},
        within_budget=within if isinstance(within, bool) else None,
    )  # fmt: skip


def eval_members(report: Mapping[str, Any]) -> dict[int, MemberResult]:
    out = {}
    for entry in report.get("members") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("member"), int):
            out[entry["member"]] = MemberResult(_float(entry.get("reward")), _float(entry.get("kl")))
    return out


def checkpoint_url(store_url: str, key: str) -> str:
    return f"{store_url.rstrip('/')}/{key}"


def checkpoints(spec: WarpRunSpec, run: str, done: frozenset[Task], store_url: str) -> dict[str, str]:
    """Named checkpoints that exist: base, each slerp and next init, and `final` (the last slerp)."""
    out: dict[str, str] = {}
    if Task.prepare() in done:
        out["base"] = checkpoint_url(store_url, layout.base(run))
    last = spec.warp.iterations - 1
    for i in range(spec.warp.iterations):
        if Task.merge(i) not in done:
            continue
        out[f"iter-{i}/slerp"] = checkpoint_url(store_url, layout.slerp(run, i))
        if i < last:
            out[f"iter-{i + 1}/init"] = checkpoint_url(store_url, layout.init(run, i + 1))
        else:
            out["final"] = checkpoint_url(store_url, layout.slerp(run, i))
    return out


def _member_state(task: Task, attempts: Sequence[JobView], done: frozenset[Task]) -> str:
    if task in done:
        return "Succeeded"
    active = next((j for j in reversed(attempts) if j.state in ACTIVE_STATES), None)
    if active is not None:
        return active.state
    if attempts and attempt_failed(attempts[-1], done):
        return "Failed"
    return "Pending"


def members(
    spec: WarpRunSpec, prog: Progress, obs: Observation, previous: WarpRunStatus
) -> list[MemberStatus]:
    before = {(m.iteration, m.member): m for m in previous.members}
    upto = min(prog.iteration, spec.warp.iterations - 1)
    out = []
    for i in range(upto + 1):
        for m in range(spec.warp.policies):
            task = Task.train(i, m)
            attempts = obs.attempts.get(task, [])
            old = before.get((i, m))
            latest = attempts[-1] if attempts else None
            result = obs.members.get((i, m), MemberResult())
            out.append(
                MemberStatus(
                    iteration=i,
                    member=m,
                    job=latest.name if latest else (old.job if old else None),
                    state=_member_state(task, attempts, obs.done),
                    attempts=max(len(attempts), old.attempts if old else 0, obs.jobs.get(task, TaskJobs()).failures),
                    start_time=(latest.start_time if latest and latest.start_time else (old.start_time if old else None)),
                    completion_time=(
                        latest.completion_time if latest and latest.completion_time
                        else (old.completion_time if old else None)
                    ),
                    reward=result.reward if result.reward is not None else (old.reward if old else None),
                    kl=result.kl if result.kl is not None else (old.kl if old else None),
                    **_member_steps(spec, task, obs, old),
                )
            )  # fmt: skip
    return out[-MAX_MEMBERS:]


def _member_steps(spec: WarpRunSpec, task: Task, obs: Observation, old: MemberStatus | None) -> dict[str, Any]:
    """step/steps and the last logged reward and KL of a member: from its log as last read, else as before."""
    total = spec.warp.steps_for(task.iteration)
    log = obs.progress.logs.get((task.iteration, task.member)) if obs.progress is not None else None
    step = total if task in obs.done else (min(log.step, total) if log else (old.step if old else None))
    reward = log.reward if log and log.reward is not None else (old.last_reward if old else None)
    kl = log.kl if log and log.kl is not None else (old.last_kl if old else None)
    return {"step": step, "steps": total, "last_reward": reward, "last_kl": kl}


def rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def run_progress_status(view: ProgressView | None, *, phase: str | None, completion_time: str | None,
                        previous: RunProgress | None) -> RunProgress | None:  # fmt: skip
    """status.progress: totals of the last read; the ETA from the read's time and the measured rate."""
    if view is None or view.run is None:
        return previous
    run = view.run
    eta = None
    if phase == "Succeeded":
        eta = completion_time
    elif phase not in ("Suspended", "Failed") and run.remaining_seconds is not None:
        eta = rfc3339(view.read_at + run.remaining_seconds)
    rate = run.steps_per_second
    return RunProgress(
        summary=f"{run.steps_done}/{run.steps_total} ({run.percent:g}%)",
        percent=run.percent,
        steps_done=run.steps_done,
        steps_total=run.steps_total,
        steps_per_second=float(f"{rate:.4g}") if rate else None,
        estimated_completion_time=eta,
        updated_at=rfc3339(view.read_at),
    )


def _ready_message(spec: WarpRunSpec, prog: Progress) -> str:
    if prog.phase == "Succeeded":
        return f"all {spec.warp.iterations} iterations done" + ("; the policy is exported (status.export)" if spec.export else "")
    if prog.phase == "Pending":
        return "preparing: copying the SFT policy into the store"
    shown = min(prog.iteration, spec.warp.iterations - 1)
    return (
        f"iteration {shown} of {spec.warp.iterations} (0-based): "
        f"{prog.members_done}/{prog.members_total} members trained"
    )


def spec_conditions(
    conds: Sequence[Condition], check: SpecCheck, *, now: str, generation: int | None
) -> list[Condition]:
    if check.invalid:
        reason = C.FORBIDDEN if check.forbidden else C.INVALID_SPEC
        conds = C.set_condition(conds, C.INVALID, True, reason, check.invalid, now=now, generation=generation)
    else:
        conds = C.clear_condition(conds, C.INVALID, C.VALID_SPEC, "the spec is valid", now=now, generation=generation)
    if check.refused:
        message = (
            f"{', '.join(check.refused)} changed while the run is running; that would change its results. "
            "The run continues with status.acceptedSpec: revert the change, or create a new WarpRun. "
            "Safe to change: spec.suspend, spec.failurePolicy, spec.cleanup, spec.resources, spec.queueName."
        )
        conds = C.set_condition(
            conds, C.SPEC_CHANGE_REFUSED, True, C.UNSAFE_FIELDS_CHANGED, message, now=now, generation=generation
        )
    else:
        conds = C.clear_condition(
            conds, C.SPEC_CHANGE_REFUSED, C.SPEC_ACCEPTED, "the spec matches the accepted spec",
            now=now, generation=generation,
        )  # fmt: skip
    return list(conds)


def queued_jobs(obs: Observation) -> list[JobView]:
    """The latest attempt of each task, where it waits for Kueue's admission; a gang Job once (it stands
    for each of its members)."""
    latest = [atts[-1] for _, atts in sorted(obs.attempts.items())
              if atts and atts[-1].state == "Queued" and not atts[-1].deleting]  # fmt: skip
    return list({v.name: v for v in latest}.values())


def admission_condition(
    conds: Sequence[Condition], spec: WarpRunSpec, obs: Observation, *, now: str, generation: int | None
) -> list[Condition]:
    """Pending while Jobs wait for Kueue (its lastTransitionTime: since when); False once all are admitted."""
    queued = [] if spec.suspend else queued_jobs(obs)
    if not queued:
        return C.clear_condition(conds, C.PENDING, C.ADMITTED, "no Job waits for admission",
                                 now=now, generation=generation)  # fmt: skip
    queues = sorted({v.queue for v in queued if v.queue})
    names = ", ".join(v.name for v in queued[:8]) + (f" and {len(queued) - 8} more" if len(queued) > 8 else "")
    message = (f"{len(queued)} Job(s) wait for Kueue to admit them from LocalQueue "
               f"{', '.join(repr(q) for q in queues)}: {names}")  # fmt: skip
    return C.set_condition(conds, C.PENDING, True, C.WAITING_FOR_ADMISSION, message, now=now, generation=generation)


def invalid_status(
    previous: WarpRunStatus, check: SpecCheck, *, now: str, generation: int | None
) -> WarpRunStatus:
    """A run whose spec never validated: Failed, with the Invalid condition naming the fields; no Jobs."""
    conds = spec_conditions(previous.conditions, check, now=now, generation=generation)
    conds = C.set_condition(
        conds, C.READY, False, C.FORBIDDEN if check.forbidden else C.INVALID_SPEC,
        "fix the spec: see the Invalid condition", now=now, generation=generation,
    )  # fmt: skip
    return WarpRunStatus(
        phase="Failed", conditions=conds, observed_generation=generation, start_time=previous.start_time or now
    )


def suspension_conditions(conds: Sequence[Condition], spec: WarpRunSpec, jobs: Mapping[Task, TaskJobs],
                          done: frozenset[Task], *, now: str, generation: int | None,
                          queue: str | None = None) -> list[Condition]:  # fmt: skip
    if spec.suspend:
        active = sum(1 for t, j in jobs.items() if j.active and t not in done)
        held = f"{active} Job(s) held"
        if queue:  # Kueue's Jobs are deleted, not suspended (reconcile.py says why)
            held = (f"the run's unfinished Jobs are withdrawn from Kueue ({active} still stopping; they are "
                    "created again, and queue, on resume)")  # fmt: skip
        return C.set_condition(
            conds, C.SUSPENDED, True, C.SUSPENDED_BY_USER,
            f"spec.suspend is true: {held}, nothing new starts", now=now, generation=generation,
        )  # fmt: skip
    return C.clear_condition(conds, C.SUSPENDED, C.RESUMED, "spec.suspend is false", now=now, generation=generation)


def store_down_status(*, spec: WarpRunSpec, generation: int | None, previous: WarpRunStatus, check: SpecCheck,
                      jobs: Mapping[Task, TaskJobs], known_done: frozenset[Task], error: str,
                      now: str) -> WarpRunStatus:  # fmt: skip
    """The status while the store cannot be read: what the store showed before stays (fronts, members,
    checkpoints); the StoreUnavailable condition says why; suspend and resume still show, as they still act."""
    conds = spec_conditions(previous.conditions, check, now=now, generation=generation)
    conds = suspension_conditions(conds, spec, jobs, known_done, now=now, generation=generation)
    conds = C.set_condition(conds, C.STORE_UNAVAILABLE, True, C.STORE_ERROR, error, now=now, generation=generation)
    phase = previous.phase
    if phase not in ("Succeeded", "Failed"):
        if spec.suspend:
            phase = "Suspended"
        elif phase in (None, "Suspended"):  # resumed: the phase of what was seen done before
            phase = progress(spec, Observed(done=known_done, jobs=jobs)).phase
    return previous.model_copy(update={"phase": phase, "conditions": conds, "observed_generation": generation})


def blocked_status(
    previous: WarpRunStatus, type_: str, reason: str, message: str, *, now: str, generation: int | None
) -> WarpRunStatus:
    """A run the operator will not execute as it stands (its store is another run's, or not allowed):
    Failed, with condition `type_` saying why; no Jobs. Level-triggered: once the cause is gone, the
    next reconcile carries on and clears the condition."""
    conds = C.set_condition(previous.conditions, type_, True, reason, message, now=now, generation=generation)
    conds = C.set_condition(conds, C.READY, False, type_, f"see the {type_} condition", now=now, generation=generation)
    return previous.model_copy(update={
        "phase": "Failed", "conditions": conds, "observed_generation": generation,
        "start_time": previous.start_time or now,
    })  # fmt: skip


def build_status(
    *,
    run: str,
    spec: WarpRunSpec,
    generation: int | None,
    previous: WarpRunStatus,
    check: SpecCheck,
    obs: Observation,
    actions: Sequence[Action],
    store_url: str,
    now: str,
    queue: str | None = None,
) -> WarpRunStatus:
    """`queue`: the Kueue LocalQueue the run's Jobs go to (None: Kueue does not manage them)."""
    succeeded_before = previous.phase == "Succeeded"
    prog = progress(spec, Observed(done=obs.done, jobs=obs.jobs, succeeded=succeeded_before), actions)

    fronts = [
        IterationFront(iteration=i, points=pts)
        for i in sorted(obs.fronts)
        if (pts := front_points(obs.fronts[i]))
    ]
    latest = point_at(fronts[-1].points, spec.warp.liti_eta) if fronts else None

    conds = spec_conditions(previous.conditions, check, now=now, generation=generation)
    conds = suspension_conditions(conds, spec, obs.jobs, obs.done, now=now, generation=generation, queue=queue)
    conds = admission_condition(conds, spec, obs, now=now, generation=generation)
    fail = next((a for a in actions if isinstance(a, Fail)), None)
    if fail is not None:
        conds = C.set_condition(conds, C.FAILED, True, C.TASK_FAILED, fail.reason, now=now, generation=generation)
    else:
        conds = C.clear_condition(
            conds, C.FAILED, C.RETRIES_AVAILABLE, "no task has exhausted its retries", now=now, generation=generation
        )
    ready = prog.phase == "Succeeded"
    conds = C.set_condition(
        conds, C.READY, ready, C.SUCCEEDED if ready else prog.phase, _ready_message(spec, prog),
        now=now, generation=generation,
    )  # fmt: skip

    failures = {
        t.id: TaskFailures(count=j.failures, reason=j.last_failure or "")
        for t, j in sorted(obs.jobs.items())
        if j.failures > 0
    }
    completion_time = previous.completion_time or (now if ready else None)
    exported = export_status(obs.export) if Task.export() in obs.done else None
    named = checkpoints(spec, run, obs.done, store_url)
    if exported is not None:
        named["export"] = exported.location
    return WarpRunStatus(
        phase=prog.phase,
        iteration=prog.iteration,
        members_done=f"{prog.members_done}/{prog.members_total}",
        reward=latest.reward if latest else None,
        kl=latest.kl if latest else None,
        members=members(spec, prog, obs, previous),
        progress=run_progress_status(obs.progress, phase=prog.phase, completion_time=completion_time,
                                     previous=previous.progress),  # fmt: skip
        checkpoints=named,
        pareto=fronts,
        conditions=conds,
        observed_generation=generation,
        start_time=previous.start_time or now,
        completion_time=completion_time,
        failures=failures,
        export=exported,
        accepted_spec=spec,
    )


# ------------------------------------------------------------------ what to send


def status_document(status: WarpRunStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def _diff(old: Any, new: Any) -> Any:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        patch: dict[str, Any] = {}
        for key in new:
            if key not in old:
                patch[key] = new[key]
            elif old[key] != new[key]:
                patch[key] = _diff(old[key], new[key])
        for key in old:
            if key not in new:
                patch[key] = None
        return patch
    return new


def status_patch(old: Mapping[str, Any] | WarpRunStatus | None, new: WarpRunStatus) -> dict[str, Any] | None:
    """The JSON merge patch taking the stored status to `new`, or None when they mean the same.

    The stored status is compared as the model reads it: the API server fills in the schema's defaults
    (nulls, "Pending", 0, the spec's defaults in acceptedSpec), which the model has too, so a status
    that only gained server defaults is unchanged, and no reconcile rewrites it. `old` may be given as
    `previous_status` read it already (a pass does, at its start), so it is not parsed twice.
    """
    stored = old if isinstance(old, WarpRunStatus) else previous_status(old)
    patch = _diff(status_document(stored), status_document(new))
    return patch or None
