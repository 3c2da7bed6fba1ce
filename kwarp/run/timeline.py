"""The run over time, for `kwarp report`: training progress by wall time, each task attempt's start and
end, and how long each Job waited for Kueue's admission.

Read from the store only:
- progress: the members' metrics.jsonl rows (`step`, `time`), summed over members against the run's
  total steps, so the curve is the same for both executors and needs no metrics server;
- attempts: the embedded runner's `<run>/runner.json`, or the operator's `<run>/jobs.json` (the same
  entry format plus `queue`, `created` and `admission_wait_seconds`, operator/joblog.py);
- the executor: the folder's ownership record (`OWNER.json`).
An embedded run has no admission: `kwarp run` starts its tasks itself, so the report says so instead
of showing a wait of zero. An operator run without a Kueue queue has none either.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kwarp.core.ownership import owner_key
from kwarp.run.rundata import RUNNER_JSON, IterationData, as_number
from kwarp.store import Store, layout

MAX_POINTS = 400  # progress points kept for the figure and summary.json (a long run logs 100k+ steps)
STATUS_COLORS = {"succeeded": "#56a64b", "failed": "#e02f44", "interrupted": "#f2a20c", "running": "#3274d9",
                 "fenced": "#8f3bb8"}


@dataclass(frozen=True)
class Attempt:
    task: str
    attempt: int
    start: float | None
    end: float | None
    status: str | None
    job: str | None = None
    queue: str | None = None  # the Kueue LocalQueue (operator runs with spec.queueName)
    created: float | None = None  # when the Job was created (suspended, when queued)
    wait: float | None = None  # seconds from creation to Kueue's admission


@dataclass(frozen=True)
class Timeline:
    executor: str | None  # "local" (kwarp run), "operator", or None (no ownership record)
    attempts: list[Attempt] = field(default_factory=list)
    progress: list[tuple[float, float]] = field(default_factory=list)  # (unix time, fraction of steps done)

    @property
    def waits(self) -> list[float]:
        return [a.wait for a in self.attempts if a.wait is not None]

    @property
    def queues(self) -> list[str]:
        return sorted({a.queue for a in self.attempts if a.queue})

    def admission_note(self) -> str:
        """What the report says about admission, in one sentence."""
        if self.executor == "local":
            return ("An embedded run (kwarp run) has no admission: its runner starts each task itself, "
                    "with no queue in between.")  # fmt: skip
        if self.waits:
            w = self.waits
            return (f"{len(w)} Job(s) admitted by Kueue from {', '.join(self.queues)}: waited median "
                    f"{_seconds(statistics.median(w))}, longest {_seconds(max(w))} from creation to admission.")
        if self.executor == "operator" and self.attempts:
            return "No Job of this run waited in a Kueue queue (no spec.queueName): admission does not apply."
        if self.executor == "operator":
            return "No admission recorded yet: the operator records each Job once it has started (jobs.json)."
        return "No task attempt is recorded in the store (runner.json or jobs.json): admission is not known."


def load_timeline(store: Store, run: str, iterations: Sequence[IterationData]) -> Timeline:
    runner, jobs = _json(store, f"{layout.run_prefix(run)}{RUNNER_JSON}"), _json(store, layout.jobs_json(run))
    owner = _json(store, owner_key(run))
    executor = owner.get("executor") if isinstance(owner.get("executor"), str) else None
    # A folder without an ownership record (written before there was one): its timing file says who ran it.
    executor = executor or ("local" if runner else "operator" if jobs else None)
    raw = runner or jobs
    entries = raw.get("tasks") if isinstance(raw.get("tasks"), list) else []
    attempts = [a for e in entries if (a := _attempt(e)) is not None]
    attempts.sort(key=lambda a: (a.start is None, a.start or 0.0, a.task, a.attempt))
    return Timeline(executor=executor, attempts=attempts, progress=progress_over_time(iterations))


def progress_over_time(iterations: Sequence[IterationData]) -> list[tuple[float, float]]:
    """(time, steps done / total) after each logged step of any member; the total is T per member of every
    iteration (the largest step logged where T is unknown). At most MAX_POINTS points, the last one kept."""
    targets: dict[tuple[int, int], int] = {}
    events: list[tuple[float, tuple[int, int], int]] = []
    for it in iterations:
        for m in it.members:
            key = (it.iteration, m.member)
            steps = [(t, int(s)) for r in m.steps
                     if (t := as_number(r.get("time"))) is not None and (s := as_number(r.get("step"))) is not None]
            targets[key] = it.target_steps or max((s for _, s in steps), default=0)
            events.extend((t, key, s) for t, s in steps)
    total = sum(targets.values())
    if not total or not events:
        return []
    done: dict[tuple[int, int], int] = {}
    points = []
    for t, key, step in sorted(events):
        done[key] = min(step, targets[key])
        points.append((t, sum(done.values()) / total))
    stride = -(-len(points) // MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def timeline_summary(tl: Timeline) -> dict[str, Any]:
    """summary.json's `timeline`: the executor, the admission waits where there are any, each attempt."""
    w = tl.waits
    return {
        "executor": tl.executor,
        "admission": ({"jobs": len(w), "queues": tl.queues, "median_seconds": statistics.median(w),
                       "max_seconds": max(w)} if w else None),  # fmt: skip
        "admission_note": tl.admission_note(),
        "attempts": [{"task": a.task, "attempt": a.attempt, "start": a.start, "end": a.end, "status": a.status,
                      "queue": a.queue, "admission_wait_seconds": a.wait} for a in tl.attempts],  # fmt: skip
        "progress": [[round(t, 3), round(f, 6)] for t, f in tl.progress],
    }


def timeline_figure(tl: Timeline) -> bytes | None:
    """Progress over time above a bar per task attempt (its admission wait hatched before it); None when
    there is nothing timed to draw."""
    if not tl.progress and not any(a.start is not None for a in tl.attempts):
        return None
    from kwarp.run.figures import _figure, _png  # matplotlib only when drawing

    times = [t for t, _ in tl.progress] + [x for a in tl.attempts for x in (a.created, a.start, a.end) if x is not None]
    t0 = min(times)
    hours = (max(times) - t0) > 3 * 3600
    scale, unit = (3600.0, "hours") if hours else (60.0, "minutes")
    tasks = list(dict.fromkeys(a.task for a in tl.attempts if a.start is not None))
    fig = _figure(9.5, 2.6 + 0.22 * len(tasks))
    grid = fig.add_gridspec(2, 1, height_ratios=[2.2, max(1.0, 0.22 * len(tasks))])
    ax = fig.add_subplot(grid[0])
    if tl.progress:
        ax.plot([(t - t0) / scale for t, _ in tl.progress], [100 * f for _, f in tl.progress], color="#3274d9")
    ax.set_ylim(0, 100)
    ax.set_ylabel("training steps done (%)")
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)  # the Gantt below carries the time axis
    gantt = fig.add_subplot(grid[1], sharex=ax)
    now = max(times)
    for row, task in enumerate(tasks):
        for a in (a for a in tl.attempts if a.task == task and a.start is not None):
            start = (a.start - t0) / scale
            if a.created is not None and a.wait:
                gantt.barh(row, a.wait / scale, left=(a.created - t0) / scale, color="none", edgecolor="#8a949c",
                           hatch="////", linewidth=0.5)  # fmt: skip
            gantt.barh(row, ((a.end or now) - a.start) / scale, left=start,
                       color=STATUS_COLORS.get(a.status or "", "#8a949c"))  # fmt: skip
    gantt.set_yticks(range(len(tasks)), tasks, fontsize=7)
    gantt.invert_yaxis()
    gantt.set_xlabel(f"{unit} since the first record")
    gantt.grid(axis="x", alpha=0.3)
    return _png(fig)


def timeline_html(tl: Timeline, figure: str | None) -> str:
    """The report's "Timeline" section: the figure (an <img>), the admission sentence and the attempts."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(a.task)}</td><td>{a.attempt}</td><td>{e(a.queue or '–')}</td>"
        f"<td>{_seconds(a.wait) if a.wait is not None else '–'}</td>"
        f"<td>{_seconds(a.end - a.start) if a.start is not None and a.end is not None else '–'}</td>"
        f"<td>{e(a.status or '–')}</td></tr>"
        for a in tl.attempts
    )
    table = (f"<table><tr><th>task</th><th>attempt</th><th>queue</th><th>admission wait</th><th>ran</th>"
             f"<th>status</th></tr>{rows}</table>" if rows else '<p class="missing">no task attempt recorded</p>')  # fmt: skip
    caption = ("Top: training steps done over all members of all iterations, from the members' metrics.jsonl. "
               "Bottom: each task attempt from start to end (green succeeded, red failed, orange interrupted, blue "
               "running, purple fenced out: a newer attempt of the task took over); hatched before it, the time its Job waited for Kueue's admission.")  # fmt: skip
    fig_html = f"<figure>{figure}<figcaption class=caption>{caption}</figcaption></figure>" if figure else ""
    return f"""<h2>Timeline</h2>
{fig_html}
<p>{e(tl.admission_note())}</p>
{table}"""


def _attempt(e: Any) -> Attempt | None:
    if not isinstance(e, Mapping) or not isinstance(e.get("task"), str):
        return None
    return Attempt(task=e["task"], attempt=int(as_number(e.get("attempt")) or 0), start=as_number(e.get("start")),
                   end=as_number(e.get("end")), status=_text(e, "status"), job=_text(e, "job"),
                   queue=_text(e, "queue"), created=as_number(e.get("created")),
                   wait=as_number(e.get("admission_wait_seconds")))  # fmt: skip


def _text(e: Mapping[str, Any], key: str) -> str | None:
    value = e.get(key)
    return value if isinstance(value, str) else None


def _json(store: Store, key: str) -> dict[str, Any]:
    try:
        value = store.get_json(key)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
