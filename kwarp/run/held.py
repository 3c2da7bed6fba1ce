"""Tasks held by an attempt `kwarp run` did not start, and how long the runner waits for them.

When a runner's attempt of a task is fenced out (exit 75), a newer attempt holds the task's lease: another
`kwarp run` of the same run (another machine, another log folder), or a task command started by hand. The
runner does not start the task again (that would fence the newer attempt out in turn) and waits for the
store to show the task complete. That holder may have died, though (its machine gone, its runner
killed): nothing in the store says so, and the lease is never taken over by a runner on its own.

So the wait is bounded: the runner looks at the task's lease, and a member's heartbeat, every
LOOK_SECONDS; each change (a step, a new claim) is a sign of life and restarts the clock. After
`--wait-for-lease` seconds without one, the runner stops and exits HELD_EXIT_CODE with who holds the task
and what to do: run the same command later if that holder is working, or again now if it has stopped
(the new attempt then claims the task anew).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kwarp.core.plan import Task
from kwarp.store import Store, layout
from kwarp.store.fencing import FENCED_EXIT_CODE

# A trainer's heartbeat comes at most 30 s apart (trainer/outputs.py); merges, evaluations and exports show
# no progress until they publish, which takes minutes for a large policy: 30 minutes without a sign of life.
DEFAULT_WAIT_SECONDS = 1800.0
LOOK_SECONDS = 5.0
# `kwarp run` gave up waiting for a task another attempt holds: EX_TEMPFAIL, as for a fenced-out task (try later).
HELD_EXIT_CODE = FENCED_EXIT_CODE


@dataclass(frozen=True)
class Holder:
    """What the store says of the attempt that holds a task: its lease and, for a member, its heartbeat."""

    epoch: int | None
    holder: str | None
    nonce: str | None
    claimed: float | None
    beat: dict[str, Any] | None = None

    def sign(self) -> tuple[Any, ...]:
        """What changes while the holder lives: a new claim, a new heartbeat."""
        return (self.epoch, self.nonce, None if self.beat is None else (self.beat.get("step"), self.beat.get("time")))


def read_holder(store: Store, run_key: str, task: Task) -> Holder:
    lease = store.get_json(layout.lease(run_key, task.id)) or {}
    beat = store.get_json(layout.member_heartbeat(run_key, task.iteration, task.member)) if task.kind == "train" else None
    epoch = lease.get("epoch")
    return Holder(epoch=int(epoch) if isinstance(epoch, int | float) else None, holder=lease.get("holder"),
                  nonce=lease.get("nonce"), claimed=_number(lease.get("claimed")),
                  beat=beat if isinstance(beat, dict) else None)  # fmt: skip


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def describe(task: Task, h: Holder, now: float) -> str:
    """`task i0-m0 is held by host pid 12 (lease epoch 2, claimed 2026-12-03 13:20:01 UTC, 5 min ago; last
    heartbeat at step 30/60, 40 s ago)`: who, and the ages the store records."""
    if h.epoch is None:
        return f"task {task.id} has no readable lease (deleted?)"
    claimed = f", claimed {_utc(h.claimed)}, {_ago(now - h.claimed)}" if h.claimed is not None else ""
    text = f"task {task.id} is held by {h.holder or 'an unnamed holder'} (lease epoch {h.epoch}{claimed}"
    if h.beat is not None:
        beat_time = _number(h.beat.get("time"))
        text += f"; last heartbeat at step {h.beat.get('step')}/{h.beat.get('steps')}"
        text += f", {_ago(now - beat_time)}" if beat_time is not None else ""
    return text + ")"


@dataclass
class _Wait:
    since: float  # the last sign of life (or the start of the wait)
    sign: tuple[Any, ...]
    holder: Holder


@dataclass
class HeldTasks:
    """The tasks this runner waits for, each with the time of its holder's last sign of life."""

    bound: float
    waits: dict[Task, _Wait] = field(default_factory=dict)
    last_look: float = 0.0

    def __contains__(self, task: object) -> bool:
        return task in self.waits

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.waits))

    def add(self, task: Task, holder: Holder, now: float) -> None:
        self.waits[task] = _Wait(since=now, sign=holder.sign(), holder=holder)

    def forget(self, done: frozenset[Task] | set[Task]) -> None:
        for task in [t for t in self.waits if t in done]:
            del self.waits[task]

    def look(self, task: Task, holder: Holder, now: float) -> bool:
        """Record what the store shows now; True if it changed since the last look (a sign of life)."""
        wait = self.waits[task]
        wait.holder = holder
        if holder.sign() == wait.sign:
            return False
        wait.since, wait.sign = now, holder.sign()
        return True

    def due(self, now: float) -> bool:
        """Whether it is time to look at the holders again (every LOOK_SECONDS, not every poll of the loop)."""
        if not self.waits or now - self.last_look < LOOK_SECONDS:
            return False
        self.last_look = now
        return True

    def expired(self, now: float) -> list[tuple[Task, Holder, float]]:
        """(task, holder, seconds without a sign of life) of each wait past the bound."""
        return [(t, w.holder, now - w.since) for t, w in self.waits.items() if now - w.since >= self.bound]


def waiting_message(task: Task, holder: Holder, bound: float, now: float) -> str:
    """What the user reads when the runner's attempt was fenced out and it starts to wait."""
    return (
        f"a newer attempt of it, not started by this runner, holds its lease: {describe(task, holder, now)}; waiting "
        f"for that attempt to finish it, up to {bound:g} s without a sign of its progress (--wait-for-lease; to take "
        f"the task back here now: stop this run and run the same command again)"
    )


def give_up_message(task: Task, holder: Holder, quiet: float, bound: float, now: float) -> str:
    """What the user reads when the runner stops waiting: which task, who holds it, and what to do."""
    return (
        f"{describe(task, holder, now)}, an attempt this runner did not start, and it showed no sign of progress "
        f"for {quiet:.0f} s (--wait-for-lease {bound:g}). Nothing was taken over. If that holder is still working "
        f"(another `kwarp run` of this run), let it finish and run this command again later, or with a larger "
        f"--wait-for-lease; if it has stopped (its machine or runner is gone), run this command again now: its "
        f"new attempt claims the task anew"
    )
