"""A run as the store holds it, read into plain data, and the pure numbers drawn from its fronts.

`load_run(store, run)` reads only what the tasks wrote (docs/internals.md "Files the tasks write"):
per iteration `eval.json` (the LiTI front), `merge.json` (angles between task vectors) and each
member's `metrics.jsonl`, plus the embedded runner's optional `<run>/runner.json` (task timings; for a
cluster run the operator's `<run>/jobs.json`) and `<run>/export.json` (the exported policy, with spec.export).
Anything may be missing — a run still training, an evaluation not yet written, a truncated last
log line — and the data shows what exists.

The headline numbers (`reward_at_kl`, `hypervolume`, `reference_kl`) are pure functions; the report
and the reproduction checks share them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from kwarp.store import Store, layout

if TYPE_CHECKING:
    from kwarp.core.spec import WarpRun, WarpRunSpec

RUNNER_JSON = "runner.json"
PAPER_ETA = 0.3  # the paper's LiTI η, used only when neither the spec nor merge.json gives one


# ------------------------------------------------------------------ data model


@dataclass(frozen=True)
class Point:
    """A policy measured on the eval prompts: mean reward and KL to θ_sft, with standard errors, and
    the gold reward when the run has one."""

    reward: float
    kl: float
    reward_stderr: float | None = None
    kl_stderr: float | None = None
    eta: float | None = None
    gold: float | None = None  # the held-out judge on the same completions (spec.evaluation.goldReward)
    gold_stderr: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Point | None:
        """A point from an eval.json entry; None when the entry is absent or lacks reward/KL."""
        if not isinstance(raw, Mapping):
            return None
        reward, kl = as_number(raw.get("reward")), as_number(raw.get("kl", raw.get("kl_sft")))
        if reward is None or kl is None:
            return None
        return cls(
            reward=reward,
            kl=kl,
            reward_stderr=as_number(raw.get("reward_stderr")),
            kl_stderr=as_number(raw.get("kl_stderr", raw.get("kl_sft_stderr"))),
            eta=as_number(raw.get("eta")),
            gold=as_number(raw.get("gold")),
            gold_stderr=as_number(raw.get("gold_stderr")),
        )

    def to_json(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        if self.eta is not None:
            out["eta"] = self.eta
        out.update(reward=self.reward, reward_stderr=self.reward_stderr, kl=self.kl, kl_stderr=self.kl_stderr)
        if self.gold is not None:
            out.update(gold=self.gold, gold_stderr=self.gold_stderr)
        return out


@dataclass(frozen=True)
class TaskTiming:
    """One task's latest attempt as the embedded runner recorded it in runner.json."""

    start: float | None
    end: float | None
    attempts: int
    status: str | None

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else max(0.0, self.end - self.start)


@dataclass
class MemberData:
    member: int
    steps: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows, in step order
    final: Point | None = None  # from eval.json "members"
    done: bool = False  # the final checkpoint is published

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-step metric, skipping rows where it is missing or not finite."""
        xs, ys = [], []
        for row in self.steps:
            value, step = as_number(row.get(key)), as_number(row.get("step"))
            if value is not None and step is not None:
                xs.append(step)
                ys.append(value)
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def eval_trajectory(self) -> list[tuple[float, Point]]:
        """(step, point) for every step where the trainer evaluated on held-out prompts (KL to θ_sft)."""
        out = []
        for row in self.steps:
            point, step = Point.from_json(row.get("eval")), as_number(row.get("step"))
            if point is not None and step is not None:
                out.append((step, point))
        return out

    def training_seconds(self) -> float | None:
        """Wall time from the log: last step's end minus first step's start (its end less its duration)."""
        times = [(as_number(r.get("time")), as_number(r.get("step_seconds"))) for r in self.steps]
        times = [(t, s) for t, s in times if t is not None]
        if not times:
            return None
        first_end, first_duration = times[0]
        return max(0.0, times[-1][0] - (first_end - (first_duration or 0.0)))

    def last(self, key: str, fraction: float = 0.1) -> float | None:
        """Mean of a metric over the last `fraction` of the logged steps (single steps are noisy)."""
        _, values = self.series(key)
        if values.size == 0:
            return None
        tail = values[-max(1, math.ceil(values.size * fraction)) :]
        return float(tail.mean())


@dataclass
class IterationData:
    iteration: int
    members: list[MemberData]
    front: list[Point] = field(default_factory=list)  # sorted by η
    init: Point | None = None
    next_init: Point | None = None
    merge: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    timings: dict[str, TaskTiming] = field(default_factory=dict)  # task id -> timing
    target_steps: int | None = None  # T of this iteration, when the spec is known

    @property
    def status(self) -> str:
        """complete (front evaluated), evaluating (merged), merging (members done), training, pending."""
        if self.evaluation is not None:
            return "complete"
        if self.merge is not None:
            return "evaluating"
        if self.members and all(m.done for m in self.members):
            return "merging"
        if any(m.steps or m.done for m in self.members):
            return "training"
        return "pending"

    @property
    def slerp(self) -> Point | None:
        """θ_slerp,i is the front's η = 1 end."""
        return next((p for p in self.front if p.eta is not None and math.isclose(p.eta, 1.0)), None)

    def angles(self) -> list[tuple[str, float]]:
        """(group name, angle in degrees) from merge.json; a list of angles (M > 2) is averaged."""
        out = []
        for group in (self.merge or {}).get("groups", []) or []:
            if not isinstance(group, Mapping):
                continue
            raw = group.get("angle_deg")
            values = raw if isinstance(raw, list) else [raw]
            numbers = [v for v in (as_number(x) for x in values) if v is not None]
            if numbers:
                out.append((str(group.get("name", f"group {len(out)}")), sum(numbers) / len(numbers)))
        return out


@dataclass
class RunData:
    run: str
    iterations: list[IterationData]  # 0 .. expected-1, pending ones included
    liti_eta: float
    document: dict[str, Any] | None  # the WarpRun (or its spec) as plain data, None if unknown
    run_timings: list[TaskTiming] = field(default_factory=list)
    export: dict[str, Any] | None = None  # <run>/export.json: the exported policy (spec.export), if done

    @property
    def exported(self) -> Point | None:
        """The exported policy as measured (its η on the final front), if the run exported one."""
        measured = (self.export or {}).get("measured")
        point = Point.from_json(measured)
        eta = as_number((self.export or {}).get("eta"))
        if point is None:
            return None
        return Point(point.reward, point.kl, point.reward_stderr, point.kl_stderr, eta, point.gold, point.gold_stderr)

    @property
    def sft(self) -> Point | None:
        """θ_sft on the eval prompts: the η = 0 end of the earliest front (every front starts there)."""
        for it in self.iterations:
            for p in it.front:
                if p.eta is not None and p.eta == 0.0:
                    return p
        first = self.iterations[0] if self.iterations else None
        return first.init if first is not None else None

    @property
    def with_front(self) -> list[IterationData]:
        return [it for it in self.iterations if it.front]


# ------------------------------------------------------------------ headline numbers (pure)


def reward_at_kl(front: Sequence[Point], kl: float) -> float | None:
    """The best reward the front reaches at exactly `kl` nats, by linear interpolation in KL.

    The front is the polyline through its points in η order (θ_η for the evaluated η grid). For
    every segment whose KL range contains `kl` — including a point whose KL equals it — the reward
    is interpolated linearly in KL along that segment; the result is the largest of these rewards.
    When the measured KL grows with η (the usual case) exactly one segment qualifies and this is
    plain linear interpolation; with noisy, non-monotone KL it stays well defined. None when `kl`
    lies outside [min KL, max KL] of the front (no extrapolation) or the front is empty.
    """
    pts = sorted(front, key=lambda p: (p.eta is None, p.eta or 0.0))
    best: float | None = None
    candidates = [p.reward for p in pts if p.kl == kl]
    for a, b in pairwise(pts):
        lo, hi = min(a.kl, b.kl), max(a.kl, b.kl)
        if lo <= kl <= hi and hi > lo:
            candidates.append(a.reward + (b.reward - a.reward) * (kl - a.kl) / (b.kl - a.kl))
    for value in candidates:
        best = value if best is None else max(best, value)
    return best


def hypervolume(front: Sequence[Point], reward_floor: float, kl_ceiling: float) -> float:
    """Area of the KL–reward plane dominated by the front's points, within the reference box.

    KL is to be minimised, reward maximised. A point (k, r) of the plane is dominated when some
    front point p has p.kl <= k and p.reward >= r. The reference box is r >= `reward_floor` (the
    SFT policy's reward) and k <= `kl_ceiling` (the largest KL of any front of the run), so

        HV = ∫_{-∞}^{kl_ceiling} max(0, max{p.reward : p.kl <= k} − reward_floor) dk

    a staircase area in nats × reward units. Only measured points count (no interpolation between
    η values); points beyond `kl_ceiling` or below `reward_floor` add nothing. A front that moves up
    (more reward at equal KL) or left (less KL at equal reward) has a larger HV.
    """
    pts = sorted((p for p in front if p.kl < kl_ceiling and p.reward > reward_floor), key=lambda p: p.kl)
    if not pts:
        return 0.0
    area, best = 0.0, reward_floor
    for p, right in zip(pts, [*(q.kl for q in pts[1:]), kl_ceiling], strict=True):
        best = max(best, p.reward)
        area += (right - p.kl) * (best - reward_floor)
    return area


def reference_kl(run: RunData) -> float | None:
    """KL of the first iteration's θ at η = litiEta (θ_init of iteration 1, when iteration 0 is first).

    From the first front's point at that η when the grid holds it; else, for iteration 0 (whose LiTI
    path from θ_init is the front itself), its eval.json `next_init`; else interpolated linearly in η
    along the first front. None when no front exists yet.
    """
    fronts = run.with_front
    if not fronts:
        return None
    first, eta = fronts[0], run.liti_eta
    on_grid = next((p for p in first.front if p.eta is not None and math.isclose(p.eta, eta)), None)
    if on_grid is not None:
        return on_grid.kl
    if first.iteration == 0 and first.next_init is not None:
        return first.next_init.kl
    etas = [(p.eta, p.kl) for p in first.front if p.eta is not None]
    if not etas or not min(e for e, _ in etas) <= eta <= max(e for e, _ in etas):
        return None
    xs, ys = zip(*sorted(etas), strict=True)
    return float(np.interp(eta, xs, ys))


# ------------------------------------------------------------------ reading the store


def load_run(store: Store, run: str, spec: WarpRun | WarpRunSpec | None = None) -> RunData:
    """Everything the report shows, read from the store. Missing files leave gaps, never errors."""
    keys = set(store.list(layout.run_prefix(run)))
    if spec is None:
        spec = _recorded_spec(store, run)
    warp_spec = _spec_of(spec)
    n_iter = _count(keys, run, "iter-", warp_spec.warp.iterations if warp_spec else 0)
    timings = _read_runner(store, run)

    iterations = []
    for i in range(n_iter):
        n_members = _count(keys, f"{run}/iter-{i}", "member-", warp_spec.warp.policies if warp_spec else 0)
        members = []
        for m in range(n_members):
            member = MemberData(m, done=f"{layout.member_final(run, i, m)}/MANIFEST.json" in keys)
            if layout.member_log(run, i, m) in keys:
                member.steps = parse_metrics(store.get_bytes(layout.member_log(run, i, m)) or b"")
            members.append(member)
        it = IterationData(i, members, target_steps=warp_spec.warp.steps_for(i) if warp_spec else None)
        it.merge = _read_json(store, layout.merge_report(run, i), keys)
        it.evaluation = _read_json(store, layout.eval_json(run, i), keys)
        if it.evaluation is not None:
            front = [Point.from_json(p) for p in it.evaluation.get("front", []) or []]
            it.front = sorted((p for p in front if p is not None), key=lambda p: (p.eta is None, p.eta or 0.0))
            it.init = Point.from_json(it.evaluation.get("init"))
            it.next_init = Point.from_json(it.evaluation.get("next_init"))
            for raw in it.evaluation.get("members", []) or []:
                m = raw.get("member") if isinstance(raw, Mapping) else None
                if isinstance(m, int) and 0 <= m < len(members):
                    members[m].final = Point.from_json(raw)
        it.timings = {tid: t for tid, t in timings.items() if tid.startswith(f"i{i}-")}
        iterations.append(it)

    return RunData(
        run=run,
        iterations=iterations,
        liti_eta=_liti_eta(warp_spec, iterations),
        document=_document(spec),
        run_timings=list(timings.values()),
        export=_read_json(store, layout.export_json(run), keys),
    )


def parse_metrics(data: bytes) -> list[dict[str, Any]]:
    """metrics.jsonl rows in step order. A torn last line (the trainer is writing) is skipped."""
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and as_number(row.get("step")) is not None:
            rows.append(row)
    # A resumed trainer re-logs the steps after its last state: keep the latest record of each step.
    by_step = {int(r["step"]): r for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def _read_json(store: Store, key: str, keys: set[str]) -> dict[str, Any] | None:
    if key not in keys:
        return None
    try:
        value = store.get_json(key)
    except ValueError:  # half-written by a foreign tool; the task writes it atomically
        return None
    return value if isinstance(value, dict) else None


def _read_runner(store: Store, run: str) -> dict[str, TaskTiming]:
    """Task id -> its latest attempt, from <run>/runner.json ({"tasks": [...]} or a bare list), or from the
    operator's <run>/jobs.json (the same entries) for a cluster run."""
    try:
        raw = store.get_json(f"{layout.run_prefix(run)}{RUNNER_JSON}") or store.get_json(layout.jobs_json(run))
    except ValueError:
        return {}
    entries = raw.get("tasks", []) if isinstance(raw, Mapping) else raw
    if not isinstance(entries, list):
        return {}
    latest: dict[str, tuple[int, TaskTiming]] = {}
    for e in entries:
        if not isinstance(e, Mapping) or not isinstance(e.get("task"), str):
            continue
        attempt = int(as_number(e.get("attempt")) or 0)
        tid = e["task"]
        prev = latest.get(tid)
        timing = TaskTiming(as_number(e.get("start")), as_number(e.get("end")), attempt + 1, _str(e.get("status")))
        if prev is None or attempt >= prev[0]:
            latest[tid] = (attempt, timing)
    return {tid: t for tid, (_, t) in latest.items()}


def _count(keys: Iterable[str], parent: str, prefix: str, expected: int) -> int:
    """max(expected, 1 + largest index of '<parent>/<prefix><n>/' found in the keys)."""
    head = f"{parent.rstrip('/')}/{prefix}"
    found = -1
    for k in keys:
        if k.startswith(head):
            digits = k[len(head) :].split("/", 1)[0]
            if digits.isdigit():
                found = max(found, int(digits))
    return max(expected, found + 1)


def _recorded_spec(store: Store, run: str) -> WarpRun | None:
    """The WarpRun the executor recorded at <run>/warprun.json, if any and still valid."""
    from kwarp.core.spec import SpecError, parse

    raw = store.get_json(layout.spec_json(run))
    if raw is None:
        return None
    try:
        return parse(raw, source=layout.spec_json(run))
    except SpecError:
        return None


def _spec_of(spec: WarpRun | WarpRunSpec | None) -> WarpRunSpec | None:
    return getattr(spec, "spec", spec)


def _document(spec: WarpRun | WarpRunSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    if hasattr(spec, "to_document"):
        return spec.to_document()
    return spec.model_dump(by_alias=True, exclude_none=True, mode="json")


def _liti_eta(spec: WarpRunSpec | None, iterations: Sequence[IterationData]) -> float:
    if spec is not None:
        return spec.warp.liti_eta
    for it in iterations:
        eta = as_number((it.merge or {}).get("eta"))
        if eta is not None:
            return eta
    return PAPER_ETA


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
