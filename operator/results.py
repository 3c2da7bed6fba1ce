"""What the store holds for a run: completed tasks, Pareto fronts, member results. Cached where it cannot change.

A task's outputs are published atomically and never change once complete, so a task seen done stays
done: each reconcile checks only the tasks whose dependencies are done and which were not seen done
before (the frontier of the run), one or two store lookups instead of one per task. eval.json and a
finished member's metrics are read once. The cache is per run uid: a new run of the same name looks
at the store afresh (and, tasks being idempotent, finds and reuses whatever is complete there).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from typing import Any

from kwarp.core.observe import task_done
from kwarp.core.plan import Task, all_tasks, dependencies
from kwarp.core.spec import WarpRunSpec
from kwarp.store import Store, layout

from .status import MemberResult, eval_members

CacheKey = tuple[str, str]  # (run uid, store url)


class RunResults:
    def __init__(self) -> None:
        self._done: dict[CacheKey, set[Task]] = {}
        self._reports: dict[CacheKey, dict[int, dict[str, Any]]] = {}
        self._member_logs: dict[CacheKey, dict[tuple[int, int], MemberResult]] = {}
        self._exports: dict[CacheKey, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def forget(self, uid: str) -> None:
        with self._lock:
            for cache in (self._done, self._reports, self._member_logs, self._exports):
                for key in [k for k in cache if k[0] == uid]:
                    del cache[key]

    def known(self, key: CacheKey) -> frozenset[Task]:
        """The tasks seen done before, without asking the store (for when it cannot be read)."""
        with self._lock:
            return frozenset(self._done.get(key, ()))

    def completed(self, key: CacheKey, store: Store, spec: WarpRunSpec, run: str) -> frozenset[Task]:
        with self._lock:
            known = set(self._done.get(key, ()))
        done: set[Task] = set()
        for task in all_tasks(spec):  # dependency order: a task's inputs come before it
            if task in known or (
                all(d in done for d in dependencies(spec, task)) and task_done(store, spec, run, task)
            ):
                done.add(task)
        with self._lock:
            self._done.setdefault(key, set()).update(done)
        return frozenset(done)

    def fronts(self, key: CacheKey, store: Store, run: str, done: Collection[Task]) -> dict[int, dict[str, Any]]:
        """eval.json of every evaluated iteration."""
        with self._lock:
            reports = dict(self._reports.get(key, {}))
        for task in done:
            if task.kind == "eval" and task.iteration not in reports:
                report = _json(store, layout.eval_json(run, task.iteration))
                if isinstance(report, dict):
                    reports[task.iteration] = report
        with self._lock:
            self._reports.setdefault(key, {}).update(reports)
        return reports

    def export(self, key: CacheKey, store: Store, run: str, done: Collection[Task]) -> dict[str, Any] | None:
        """<run>/export.json once the export is done (read once: it never changes)."""
        if Task.export() not in done:
            return None
        with self._lock:
            known = self._exports.get(key)
        if known is None:
            record = _json(store, layout.export_json(run))
            if not isinstance(record, dict):
                return None
            with self._lock:
                known = self._exports.setdefault(key, record)
        return known

    def members(
        self,
        key: CacheKey,
        store: Store,
        spec: WarpRunSpec,
        run: str,
        done: Collection[Task],
        reports: dict[int, dict[str, Any]],
        active: Collection[Task],
    ) -> dict[tuple[int, int], MemberResult]:
        """Reward and KL (to θ_sft, on the eval prompts) of each trained member: from eval.json's
        `members` once the iteration is evaluated, before that from the member's last evaluation
        logged in metrics.jsonl (read once, when its Job is over)."""
        out: dict[tuple[int, int], MemberResult] = {}
        with self._lock:
            logged = dict(self._member_logs.get(key, {}))
        for task in done:
            if task.kind != "train":
                continue
            i, m = task.iteration, task.member
            evaluated = eval_members(reports[i]).get(m) if i in reports else None
            if evaluated is not None:
                out[(i, m)] = evaluated
                continue
            if (i, m) not in logged and task not in active:
                logged[(i, m)] = last_evaluation(store.get_bytes(layout.member_log(run, i, m)))
            if (i, m) in logged:
                out[(i, m)] = logged[(i, m)]
        with self._lock:
            self._member_logs.setdefault(key, {}).update(logged)
        return out


def _json(store: Store, key: str) -> Any:
    data = store.get_bytes(key)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def last_evaluation(metrics_jsonl: bytes | None) -> MemberResult:
    """The latest step of a trainer's metrics.jsonl that carries an `eval` block: its reward and KL to θ_sft."""
    if not metrics_jsonl:
        return MemberResult()
    for line in reversed(metrics_jsonl.decode("utf-8", errors="replace").splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        block = row.get("eval") if isinstance(row, dict) else None
        if isinstance(block, dict):
            reward, kl = block.get("reward"), block.get("kl_sft")
            return MemberResult(
                float(reward) if isinstance(reward, int | float) else None,
                float(kl) if isinstance(kl, int | float) else None,
            )
    return MemberResult()
