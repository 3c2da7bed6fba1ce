"""The plan: what to do next for a WarpRun, decided from what exists. Pure: no I/O.

    plan(spec, observed) -> list[Action]

Both executors call it: the kopf operator (Jobs) and the embedded runner (local processes), so the
two cannot drift apart. The store is the truth about completed work (a task is done when its
outputs are complete checkpoints / files); jobs are the truth about work in flight and failures.

Tasks of a run with I iterations and M members (0-based):

    prepare                 copy θ_sft into <run>/base (validates model, reward and data early)
    train(i, m)             needs init(i): base for i = 0, else merge(i-1)
    merge(i)                needs train(i, 0..M-1); writes slerp(i) and, unless last, init(i+1)
    eval(i)                 needs merge(i); writes eval.json (the Pareto front of iteration i)
    export                  with spec.export only; needs eval(I-1): one policy of the final front,
                            written where spec.export.to says, then <run>/export.json

Evaluation of iteration i runs beside the training of iteration i+1. A failed task is retried
(a new attempt, a new Job name) until `failurePolicy.maxRetries` retries are spent; then the run
fails with the task and the reason. Suspension asks executors to pause running work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kwarp.core.spec import WarpRunSpec
from kwarp.store import layout

TaskKind = Literal["prepare", "train", "merge", "eval", "export"]


@dataclass(frozen=True, order=True)
class Task:
    kind: TaskKind
    iteration: int = -1
    member: int = -1

    @staticmethod
    def prepare() -> Task:
        return Task("prepare")

    @staticmethod
    def export() -> Task:
        return Task("export")

    @staticmethod
    def train(i: int, m: int) -> Task:
        return Task("train", i, m)

    @staticmethod
    def merge(i: int) -> Task:
        return Task("merge", i)

    @staticmethod
    def eval(i: int) -> Task:
        return Task("eval", i)

    @property
    def id(self) -> str:
        """Stable short id, used in labels and logs: prepare, i0-m1, i0-merge, i0-eval, export."""
        if self.kind in ("prepare", "export"):
            return self.kind
        if self.kind == "train":
            return f"i{self.iteration}-m{self.member}"
        return f"i{self.iteration}-{self.kind}"

    def job_name(self, run: str, attempt: int = 0) -> str:
        """Deterministic Job name: <run>-i<i>-m<m>, <run>-i<i>-merge, ...; retries add -r<attempt>."""
        base = f"{run}-{self.id}"
        return base if attempt == 0 else f"{base}-r{attempt}"

    def argv(self) -> list[str]:
        """The `kwarp` subcommand that performs this task (the spec comes from KWARP_SPEC or --spec)."""
        if self.kind in ("prepare", "export"):
            return [self.kind]
        if self.kind == "train":
            return ["train", "--iteration", str(self.iteration), "--member", str(self.member)]
        return [self.kind, "--iteration", str(self.iteration)]

    @staticmethod
    def parse_id(task_id: str) -> Task:
        if task_id in ("prepare", "export"):
            return Task(task_id)  # type: ignore[arg-type]
        head, _, tail = task_id.partition("-")
        if not head.startswith("i") or not tail:
            raise ValueError(f"not a task id: {task_id!r}")
        i = int(head[1:])
        if tail in ("merge", "eval"):
            return Task(tail, i)  # type: ignore[arg-type]
        if tail.startswith("m") and tail[1:].isdigit():
            return Task.train(i, int(tail[1:]))
        raise ValueError(f"not a task id: {task_id!r}")


@dataclass(frozen=True)
class TaskJobs:
    """What the executor knows about the jobs (attempts) of one task."""

    active: bool = False  # an attempt is pending or running
    suspended: bool = False  # the active attempt is paused
    failures: int = 0  # attempts that ended in failure
    last_failure: str | None = None  # reason of the latest failure, for the user


@dataclass(frozen=True)
class Observed:
    done: frozenset[Task] = frozenset()
    jobs: Mapping[Task, TaskJobs] = field(default_factory=dict)
    succeeded: bool = False  # the executor already recorded the run as Succeeded


@dataclass(frozen=True)
class Start:
    task: Task
    attempt: int  # 0 for the first try, n for the n-th retry


@dataclass(frozen=True)
class Suspend:
    task: Task


@dataclass(frozen=True)
class Resume:
    task: Task


@dataclass(frozen=True)
class Succeed:
    pass


@dataclass(frozen=True)
class Fail:
    task: Task
    reason: str


Action = Start | Suspend | Resume | Succeed | Fail


def all_tasks(spec: WarpRunSpec) -> list[Task]:
    out = [Task.prepare()]
    for i in range(spec.warp.iterations):
        out += [Task.train(i, m) for m in range(spec.warp.policies)]
        out += [Task.merge(i), Task.eval(i)]
    if spec.export is not None:
        out.append(Task.export())
    return out


def dependencies(spec: WarpRunSpec, task: Task) -> list[Task]:
    if task.kind == "prepare":
        return []
    if task.kind == "train":
        return [Task.prepare()] if task.iteration == 0 else [Task.merge(task.iteration - 1)]
    if task.kind == "merge":
        return [Task.train(task.iteration, m) for m in range(spec.warp.policies)]
    if task.kind == "export":
        return [Task.eval(spec.warp.iterations - 1)]
    return [Task.merge(task.iteration)]


def checkpoint_outputs(spec: WarpRunSpec, run: str, task: Task) -> list[str]:
    """Checkpoint keys a task publishes; the task is done when all are complete."""
    i, m = task.iteration, task.member
    if task.kind == "prepare":
        return [layout.base(run)]
    if task.kind == "train":
        return [layout.member_final(run, i, m)]
    if task.kind == "merge":
        keys = [layout.slerp(run, i)]
        if i + 1 < spec.warp.iterations:
            keys.append(layout.init(run, i + 1))
        return keys
    return []


def file_outputs(spec: WarpRunSpec, run: str, task: Task) -> list[str]:
    """Plain objects a task writes last (after its checkpoints); done when they exist."""
    if task.kind == "merge":
        return [layout.merge_report(run, task.iteration)]
    if task.kind == "eval":
        return [layout.eval_json(run, task.iteration)]
    if task.kind == "export":
        return [layout.export_json(run)]
    return []


def plan(spec: WarpRunSpec, observed: Observed) -> list[Action]:
    """The next actions for the run. Level-triggered: the same inputs always give the same actions."""
    tasks = all_tasks(spec)
    done = observed.done
    if all(t in done for t in tasks):
        return [] if observed.succeeded else [Succeed()]

    jobs = observed.jobs
    if spec.suspend:
        return [Suspend(t) for t in tasks if t not in done and _job(jobs, t).active and not _job(jobs, t).suspended]

    actions: list[Action] = []
    for t in tasks:
        j = _job(jobs, t)
        if t in done:
            continue
        if j.active:
            if j.suspended:
                actions.append(Resume(t))
            continue
        if not all(d in done for d in dependencies(spec, t)):
            continue
        if j.failures > spec.failure_policy.max_retries:
            reason = j.last_failure or "no reason recorded"
            return [
                Fail(
                    t,
                    f"{t.id} failed {j.failures} time{'s' if j.failures > 1 else ''} "
                    f"(failurePolicy.maxRetries={spec.failure_policy.max_retries}): {reason}",
                )
            ]
        actions.append(Start(t, attempt=j.failures))
    return actions


def plan_without_store(spec: WarpRunSpec, observed: Observed) -> list[Action]:
    """The actions that need nothing from the store, for when it cannot be read: hold the active Jobs
    (spec.suspend) or release them. Nothing starts, succeeds or fails on a guess about finished work;
    `observed.done` holds only what was seen done before (a task seen done stays done)."""
    active = [t for t in all_tasks(spec) if t not in observed.done and _job(observed.jobs, t).active]
    if spec.suspend:
        return [Suspend(t) for t in active if not _job(observed.jobs, t).suspended]
    return [Resume(t) for t in active if _job(observed.jobs, t).suspended]


def _job(jobs: Mapping[Task, TaskJobs], t: Task) -> TaskJobs:
    return jobs.get(t, _NO_JOBS)


_NO_JOBS = TaskJobs()


# ------------------------------------------------------------------ progress, for status and UIs

Phase = Literal["Pending", "Training", "Merging", "Evaluating", "Succeeded", "Failed", "Suspended"]


@dataclass(frozen=True)
class Progress:
    phase: Phase
    iteration: int  # the iteration being worked on (0-based); I when all are done
    members_done: int  # members of that iteration with a final checkpoint
    members_total: int


def progress(spec: WarpRunSpec, observed: Observed, actions: Iterable[Action] = ()) -> Progress:
    """Phase and position of the run, derived from what exists (pure)."""
    actions = list(actions)
    done = observed.done
    iters = spec.warp.iterations
    cur = next((i for i in range(iters) if Task.merge(i) not in done), iters)
    members = sum(1 for m in range(spec.warp.policies) if Task.train(min(cur, iters - 1), m) in done)
    if cur == iters:
        members = spec.warp.policies
    if any(isinstance(a, Fail) for a in actions):
        phase: Phase = "Failed"
    elif all(t in done for t in all_tasks(spec)):
        phase = "Succeeded"
    elif spec.suspend:
        phase = "Suspended"
    elif Task.prepare() not in done:
        phase = "Pending"
    elif cur < iters and members < spec.warp.policies:
        phase = "Training"
    elif cur < iters:
        phase = "Merging"
    else:
        phase = "Evaluating"  # the last evaluations, then the export (which evaluates its policy too)
    return Progress(phase=phase, iteration=cur, members_done=members, members_total=spec.warp.policies)


__all__ = [
    "Action",
    "Fail",
    "Observed",
    "Progress",
    "Resume",
    "Start",
    "Succeed",
    "Suspend",
    "Task",
    "TaskJobs",
    "all_tasks",
    "checkpoint_outputs",
    "dependencies",
    "file_outputs",
    "plan",
    "plan_without_store",
    "progress",
]
