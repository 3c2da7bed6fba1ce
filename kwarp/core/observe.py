"""What exists in the store for a run, as the plan's `done` set. Shared by both executors."""

from __future__ import annotations

from kwarp.core.plan import Task, all_tasks, checkpoint_outputs, file_outputs
from kwarp.core.spec import WarpRunSpec
from kwarp.store import Store


def task_done(store: Store, spec: WarpRunSpec, run: str, task: Task) -> bool:
    """A task is done when each checkpoint it publishes is complete and each file it writes last exists."""
    return all(store.has_checkpoint(k) for k in checkpoint_outputs(spec, run, task)) and all(
        store.exists(k) for k in file_outputs(spec, run, task)
    )


def completed_tasks(store: Store, spec: WarpRunSpec, run: str) -> frozenset[Task]:
    return frozenset(t for t in all_tasks(spec) if task_done(store, spec, run, t))
