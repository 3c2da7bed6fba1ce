"""The run report: `kwarp report RUN_OR_FILE` — one HTML page, three figures and summary.json.

    kwarp report warprun.yaml                     # store from spec.storage
    kwarp report my-run --store s3://bucket/runs  # a run name and its store
    kwarp report my-run --store ./runs --out ./my-report

The report reads only what the tasks wrote to the store (docs/internals.md "Files the tasks write"):
per iteration `eval.json` (the LiTI front), `merge.json` (angles between task vectors) and each
member's `metrics.jsonl`, plus the embedded runner's optional `<run>/runner.json` (task timings).
Anything may be missing — a run still training, an evaluation not yet written, a truncated last
log line — and the report shows what exists and says what does not.

Outputs, in `out_dir` (default: the store's own `<run>/report/` folder for a file:// store, else
`./<run>-report/`), and always also in the store under `layout.report_prefix(run)`, so the store
holds the latest report of every run whatever its backend:

    report.html   self-contained (figures as data: URIs, inline CSS), written last
    pareto.png    the KL–reward plane: fronts, training trajectories, members, SLERP, next init, SFT
    curves.png    reward and KL per member over training steps
    angles.png    angles between the members' task vectors per layer group
    summary.json  the numbers behind the figures and the headline (see `build_summary`)

The headline numbers (`reward_at_kl`, `hypervolume`) are pure functions defined below; other tools
(the reproduction checks) reuse them.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from kwarp.errors import UserError
from kwarp.store import FileStore, Store, layout, open_store

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from kwarp.spec import WarpRun, WarpRunSpec

RUNNER_JSON = "runner.json"
FIGURES = ("pareto.png", "curves.png", "angles.png")
DPI = 120
PAPER_ETA = 0.3  # the paper's LiTI η, used only when neither the spec nor merge.json gives one


# ------------------------------------------------------------------ data model


@dataclass(frozen=True)
class Point:
    """A policy measured on the eval prompts: mean reward and KL to θ_sft, with standard errors."""

    reward: float
    kl: float
    reward_stderr: float | None = None
    kl_stderr: float | None = None
    eta: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Point | None:
        """A point from an eval.json entry; None when the entry is absent or lacks reward/KL."""
        if not isinstance(raw, Mapping):
            return None
        reward, kl = _number(raw.get("reward")), _number(raw.get("kl", raw.get("kl_sft")))
        if reward is None or kl is None:
            return None
        return cls(
            reward=reward,
            kl=kl,
            reward_stderr=_number(raw.get("reward_stderr")),
            kl_stderr=_number(raw.get("kl_stderr")),
            eta=_number(raw.get("eta")),
        )

    def to_json(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        if self.eta is not None:
            out["eta"] = self.eta
        out.update(reward=self.reward, reward_stderr=self.reward_stderr, kl=self.kl, kl_stderr=self.kl_stderr)
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
            value, step = _number(row.get(key)), _number(row.get("step"))
            if value is not None and step is not None:
                xs.append(step)
                ys.append(value)
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def eval_trajectory(self) -> list[tuple[float, Point]]:
        """(step, point) for every step where the trainer evaluated on held-out prompts (KL to θ_sft)."""
        out = []
        for row in self.steps:
            point, step = Point.from_json(row.get("eval")), _number(row.get("step"))
            if point is not None and step is not None:
                out.append((step, point))
        return out

    def training_seconds(self) -> float | None:
        """Wall time from the log: last step's end minus first step's start (its end less its duration)."""
        times = [(_number(r.get("time")), _number(r.get("step_seconds"))) for r in self.steps]
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
            numbers = [v for v in (_number(x) for x in values) if v is not None]
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


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at both ends so the curve keeps its length."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size <= 2:
        return values.copy()
    window = min(window, values.size)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts


def smoothing_window(n: int) -> int:
    """A tenth of the steps, at most 200: enough to read the trend of a noisy REINFORCE curve, short
    enough to keep its shape (warm-up, plateaus)."""
    return min(200, max(1, n // 10))


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
    )


def parse_metrics(data: bytes) -> list[dict[str, Any]]:
    """metrics.jsonl rows in step order. A torn last line (the trainer is writing) is skipped."""
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and _number(row.get("step")) is not None:
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
    """Task id -> its latest attempt, from <run>/runner.json ({"tasks": [...]} or a bare list)."""
    try:
        raw = store.get_json(f"{layout.run_prefix(run)}{RUNNER_JSON}")
    except ValueError:
        return {}
    entries = raw.get("tasks", []) if isinstance(raw, Mapping) else raw
    if not isinstance(entries, list):
        return {}
    latest: dict[str, tuple[int, TaskTiming]] = {}
    for e in entries:
        if not isinstance(e, Mapping) or not isinstance(e.get("task"), str):
            continue
        attempt = int(_number(e.get("attempt")) or 0)
        tid = e["task"]
        prev = latest.get(tid)
        timing = TaskTiming(_number(e.get("start")), _number(e.get("end")), attempt + 1, _str(e.get("status")))
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
    from kwarp.spec import SpecError, parse

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
        eta = _number((it.merge or {}).get("eta"))
        if eta is not None:
            return eta
    return PAPER_ETA


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------ summary.json


def build_summary(data: RunData) -> dict[str, Any]:
    """The report's numbers as plain data.

    Per iteration: `front` (points in η order), `members` (held-out eval point and training
    statistics), `slerp` (the front's η = 1 point), `next_init` (θ_init of the next iteration,
    η = litiEta from this θ_init), `best_reward_at_kl` (`reward_at_kl` of the front at the
    headline's `reference_kl`), `hypervolume` (`hypervolume` of the front with floor = SFT reward
    and ceiling = `reference_hv_kl`), `angles_mean_deg` and `timings`.
    `headline` gives those two numbers for the latest evaluated iteration and for the first.
    """
    sft = data.sft
    ref_kl = reference_kl(data)
    fronts = data.with_front
    hv_kl = max((p.kl for it in fronts for p in it.front), default=None)

    def best_at(it: IterationData) -> float | None:
        return reward_at_kl(it.front, ref_kl) if ref_kl is not None and it.front else None

    def hv(it: IterationData) -> float | None:
        if sft is None or hv_kl is None or not it.front:
            return None
        return hypervolume(it.front, sft.reward, hv_kl)

    iterations = []
    for it in data.iterations:
        angles = [a for _, a in it.angles()]
        iterations.append(
            {
                "iteration": it.iteration,
                "status": it.status,
                "front": [p.to_json() for p in it.front],
                "members": [_member_summary(m, it) for m in it.members],
                "slerp": _point_json(it.slerp),
                "init": _point_json(it.init),
                "next_init": _point_json(it.next_init),
                "best_reward_at_kl": best_at(it),
                "hypervolume": hv(it),
                "angles_mean_deg": sum(angles) / len(angles) if angles else None,
                "merge_seconds": _number((it.merge or {}).get("seconds")),
                "eval_seconds": _number((it.evaluation or {}).get("seconds")),
            }
        )
    last, first = (fronts[-1], fronts[0]) if fronts else (None, None)
    headline = {
        "iteration": last.iteration if last else None,
        "iterations_evaluated": len(fronts),
        "iterations_total": len(data.iterations),
        "liti_eta": data.liti_eta,
        "reference_kl": ref_kl,
        "reference_hv_kl": hv_kl,
        "sft": _point_json(sft),
        "best_reward_at_kl": best_at(last) if last else None,
        "best_reward_at_kl_first": best_at(first) if first else None,
        "hypervolume": hv(last) if last else None,
        "hypervolume_first": hv(first) if first else None,
        "slerp": _point_json(last.slerp) if last else None,
        "wall_seconds": _run_wall_seconds(data),
    }
    settings = (data.document or {}).get("spec", data.document) or {}
    return {"run": data.run, "iterations": iterations, "settings": settings, "headline": headline}


def _member_summary(m: MemberData, it: IterationData) -> dict[str, Any]:
    timing = it.timings.get(f"i{it.iteration}-m{m.member}")
    seconds = timing.seconds if timing is not None and timing.seconds is not None else m.training_seconds()
    steps, _ = m.series("reward")
    return {
        "member": m.member,
        "done": m.done,
        "eval": _point_json(m.final),
        "train": {
            "steps": int(steps.max()) if steps.size else 0,
            "reward_last": m.last("reward"),
            "kl_anchor_last": m.last("kl_anchor"),
            "kl_init_last": m.last("kl_init"),
            "tokens_per_second": m.last("tokens_per_second", fraction=1.0),
            "seconds": seconds,
            "attempts": timing.attempts if timing else None,
        },
    }


def _point_json(p: Point | None) -> dict[str, float | None] | None:
    return None if p is None else p.to_json()


def _run_wall_seconds(data: RunData) -> float | None:
    starts = [t.start for t in data.run_timings if t.start is not None]
    ends = [t.end for t in data.run_timings if t.end is not None]
    return max(ends) - min(starts) if starts and ends else None


# ------------------------------------------------------------------ figures


def iteration_colors(n: int) -> list[tuple[float, float, float, float]]:
    """A sequential (viridis) colour per iteration, dark to light; the palest yellow is left out."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if n <= 1:
        return [cmap(0.3)]
    return [cmap(0.05 + 0.8 * i / (n - 1)) for i in range(n)]


def _figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot): no global state, no GUI backend; savefig renders with Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.set_layout_engine("tight")
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def pareto_figure(data: RunData) -> bytes:
    """The KL–reward plane of the run (the picture of the paper's Figure 1(b))."""
    from matplotlib.lines import Line2D

    fig = _figure(9.5, 6.6)
    ax = fig.add_subplot()
    colors = iteration_colors(len(data.iterations))
    eta = data.liti_eta
    shown: set[str] = set()  # which kinds of marks are drawn: the legend lists only those
    last_front = data.with_front[-1].iteration if data.with_front else None

    for it, color in zip(data.iterations, colors, strict=True):
        for member in it.members:
            traj = member.eval_trajectory()
            if traj:
                ks, rs = [p.kl for _, p in traj], [p.reward for _, p in traj]
                ax.plot(ks, rs, ls=":", lw=1.2, marker=".", ms=3, color=color, alpha=0.7, zorder=2)
                shown.add("eval trajectory")
            elif it.iteration == 0:
                # No held-out evaluation logged: at iteration 0 θ_init = θ_sft, so the training
                # batches' KL to init is a KL to SFT (noisier, on training prompts).
                steps, kls = member.series("kl_init")
                _, rewards = member.series("reward")
                if kls.size and kls.size == rewards.size:
                    w = smoothing_window(kls.size)
                    ax.plot(smooth(kls, w), smooth(rewards, w), ls="--", lw=1.0, color=color, alpha=0.6, zorder=2)
                    shown.add("batch trajectory")
        if it.front:
            shown.add("front")
            ks = [p.kl for p in it.front]
            rs = [p.reward for p in it.front]
            ax.errorbar(
                ks, rs,
                xerr=[p.kl_stderr or 0.0 for p in it.front],
                yerr=[p.reward_stderr or 0.0 for p in it.front],
                fmt="-o", color=color, lw=2.2, ms=5, capsize=2.5, elinewidth=1, zorder=4,
            )
            if it.iteration == last_front:
                for p in it.front:
                    if p.eta is not None and p.eta > 0:
                        # Above-left of the point: the better side, left empty by the points below the front.
                        ax.annotate(
                            f"η={p.eta:g}", (p.kl, p.reward), textcoords="offset points", xytext=(-5, 5),
                            ha="right", va="bottom", fontsize=8, color="0.25", zorder=7,
                        )
        for member in it.members:
            if member.final is not None:
                ax.scatter(member.final.kl, member.final.reward, marker="^", s=70, color=color,
                           edgecolors="black", linewidths=0.8, zorder=5)
                shown.add("member")
        if it.slerp is not None:
            ax.scatter(it.slerp.kl, it.slerp.reward, marker="*", s=260, color=color,
                       edgecolors="black", linewidths=0.8, zorder=6)
            shown.add("slerp")
        if it.next_init is not None:
            ax.scatter(it.next_init.kl, it.next_init.reward, marker="D", s=60, facecolors="white",
                       edgecolors=[color], linewidths=2.0, zorder=6)
            shown.add("next init")

    sft = data.sft
    if sft is not None:
        ax.scatter(sft.kl, sft.reward, marker="s", s=80, color="black", zorder=7)
        ax.annotate("SFT (η=0)", (sft.kl, sft.reward), textcoords="offset points", xytext=(8, -4),
                    fontsize=9, zorder=7)
        shown.add("sft")

    ax.set_title(f"WARP run '{data.run}': reward vs KL to the SFT policy, per iteration", fontsize=12)
    if not shown:
        _empty(ax, "nothing evaluated yet: fronts appear once an iteration's evaluation has run")
        return _png(fig)

    ax.set_xlabel("KL to the SFT policy (nats)")
    ax.set_ylabel("reward (reward model score)")
    ax.grid(True, alpha=0.3)
    ax.text(0.015, 0.975, "better ↖", transform=ax.transAxes, ha="left", va="top", fontsize=10, color="0.35")

    handles = []
    for it, c in zip(data.iterations, colors, strict=True):
        if it.front:
            handles.append(Line2D([], [], color=c, lw=2.2, marker="o", ms=5,
                                  label=f"iteration {it.iteration}: LiTI front (η from 0 to 1)"))
        elif any(m.steps for m in it.members):
            handles.append(Line2D([], [], color=c, lw=4, alpha=0.7,
                                  label=f"iteration {it.iteration}: {it.status}, front not evaluated yet"))
    grey = {"color": "0.6", "markeredgecolor": "black", "ls": "none"}
    legend = {
        "eval trajectory": Line2D([], [], color="0.4", ls=":", marker=".",
                                  label="a member's training (held-out evaluations)"),
        "batch trajectory": Line2D([], [], color="0.4", ls="--",
                                   label="a member's training, iteration 0 (training batches, smoothed)"),
        "member": Line2D([], [], marker="^", ms=8, label="a member's final policy (after RL)", **grey),
        "slerp": Line2D([], [], marker="*", ms=14, label="SLERP of the members (η=1)", **grey),
        "next init": Line2D([], [], marker="D", ms=7, ls="none", markerfacecolor="white", markeredgecolor="0.4",
                            markeredgewidth=2, label=f"next iteration's start (η={eta:g} from this start towards the SLERP)"),
        "sft": Line2D([], [], marker="s", ms=8, ls="none", color="black", label="SFT policy (η=0)"),
    }
    handles += [h for kind, h in legend.items() if kind in shown]
    ax.legend(handles=handles, loc="lower right", fontsize=8.5, framealpha=0.92)
    return _png(fig)


def curves_figure(data: RunData) -> bytes:
    """Reward and KL per member over training steps; iterations back to back on one step axis."""
    from matplotlib import colormaps

    rows = [
        ("reward", "reward (training batch)"),
        ("kl_anchor", "KL to the anchor (nats)"),
        ("kl_init", "KL to θ_init (nats)"),
    ]
    fig = _figure(10.0, 8.0)
    axes = fig.subplots(len(rows), 1, sharex=True)
    member_colors = colormaps["tab10"]
    iter_colors = iteration_colors(len(data.iterations))
    offset = 0.0
    spans = []
    # One window for the whole figure, so that iterations of different lengths are smoothed alike.
    w = smoothing_window(max((len(m.steps) for it in data.iterations for m in it.members), default=0))
    for it in data.iterations:
        logged = max((float(m.series("reward")[0].max()) for m in it.members if m.series("reward")[0].size), default=0.0)
        if logged == 0.0:
            continue
        length = max(logged, float(it.target_steps or 0))  # a running iteration shows its whole span
        spans.append((it.iteration, offset, offset + length))
        for m in it.members:
            for ax, (key, _) in zip(axes, rows, strict=True):
                steps, values = m.series(key)
                if not values.size:
                    continue
                color = member_colors(m.member % 10)
                ax.plot(steps + offset, values, color=color, lw=0.7, alpha=0.25)
                ax.plot(steps + offset, smooth(values, w), color=color, lw=1.8, label=f"member {m.member}")
        offset += length
    if not spans:
        for ax in axes:
            _empty(ax, "no training steps logged yet")
        axes[0].set_title(f"WARP run '{data.run}': training curves", fontsize=12)
        return _png(fig)

    for ax, (key, label) in zip(axes, rows, strict=True):
        for i, lo, hi in spans:
            ax.axvspan(lo, hi, color=iter_colors[i], alpha=0.07, lw=0)
            ax.axvline(lo, color="0.6", lw=0.8)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            _empty(ax, f"'{key}' not logged")
    for i, lo, hi in spans:
        axes[0].text((lo + hi) / 2, 1.01, f"iteration {i}", transform=axes[0].get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=9, color="0.2")
    axes[-1].set_xlabel("training step (iterations back to back)")
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    if uniq:
        axes[0].legend(uniq.values(), uniq.keys(), loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.suptitle(
        f"WARP run '{data.run}': training curves per member (faint: every step; bold: moving average over {w} steps)",
        fontsize=11.5,
    )
    return _png(fig)


def angles_figure(data: RunData) -> bytes:
    """Angles Ω between the members' task vectors, per layer group and iteration."""
    fig = _figure(10.0, 4.8)
    ax = fig.add_subplot()
    colors = iteration_colors(len(data.iterations))
    merged = [(it, c) for it, c in zip(data.iterations, colors, strict=True) if it.angles()]
    ax.set_title(f"WARP run '{data.run}': angle between the members' task vectors, per layer group", fontsize=12)
    if not merged:
        _empty(ax, "no merge yet: angles appear once an iteration's members are merged")
        return _png(fig)

    names: list[str] = []
    for it, _ in merged:
        for name, _ in it.angles():
            if name not in names:
                names.append(name)
    position = {n: k for k, n in enumerate(names)}
    top = 0.0
    if len(names) == 1:  # one angle per iteration (granularity: model): bars
        for k, (it, c) in enumerate(merged):
            angle = it.angles()[0][1]
            ax.bar(k, angle, color=c, width=0.5, label=f"iteration {it.iteration} ({angle:.1f}°)")
            top = max(top, angle)
        ax.set_xticks(range(len(merged)), [f"iteration {it.iteration}" for it, _ in merged])
    else:
        for it, c in merged:
            pts = sorted((position[n], a) for n, a in it.angles())
            mean = sum(a for _, a in pts) / len(pts)
            ax.plot([x for x, _ in pts], [a for _, a in pts], "-o", color=c, ms=4, lw=1.6,
                    label=f"iteration {it.iteration} (mean {mean:.1f}°)")
            top = max(top, max(a for _, a in pts))
        step = max(1, math.ceil(len(names) / 40))
        ticks = list(range(0, len(names), step))
        crowded = len(ticks) > 10
        ax.set_xticks(ticks, [_short_group(names[k]) for k in ticks], rotation=60 if crowded else 0,
                      ha="right" if crowded else "center", fontsize=8)
        ax.set_xlabel("layer group (parameters merged with one angle)")
    # Explained in the legend, where no text can hide a data point.
    ax.axhline(90, color="0.3", ls="--", lw=1,
               label="90°: orthogonal (task vectors of independent RL runs are nearly orthogonal)")
    ax.set_ylim(0, max(100.0, top + 8))
    ax.set_ylabel("angle Ω (degrees)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    return _png(fig)


def _short_group(name: str) -> str:
    """'model.layers.12' -> 'layers.12': the common HF prefix carries no information."""
    for prefix in ("model.", "transformer.", "gpt_neox."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# ------------------------------------------------------------------ HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1120px; padding: 1.5em 2em 4em; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #dde3e8; }
h3 { margin-bottom: .4em; }
.meta { color: #5b6670; } .caption { color: #38424b; max-width: 60em; }
.headline { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.card { border: 1px solid #dde3e8; border-radius: 6px; padding: .6em 1em; min-width: 12em; background: #f8fafb; }
.card .v { font-size: 1.35em; font-weight: 600; } .card .k { color: #5b6670; font-size: .85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eef1f3; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #dde3e8; padding: .3em .7em; text-align: right; }
th { background: #f1f4f6; } td:first-child, th:first-child { text-align: left; }
.status { display: inline-block; padding: 0 .5em; border-radius: 4px; font-size: .85em; background: #e9eef2; }
.status.complete { background: #d9f2e3; } .missing { color: #8a949c; font-style: italic; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; border-radius: 6px; }
"""


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(name)}">'


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def _pm(value: float | None, err: float | None) -> str:
    if value is None:
        return "–"
    return _fmt(value) if err is None else f"{_fmt(value)} ± {_fmt(err)}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _iteration_html(it: IterationData, summary: dict[str, Any], eta: float) -> str:
    e = html.escape
    parts = [f'<h3>Iteration {it.iteration} <span class="status {e(it.status)}">{e(it.status)}</span></h3>']
    if it.status == "pending":
        parts.append('<p class="missing">not started yet</p>')
        return "\n".join(parts)
    rows = []
    for m, ms in zip(it.members, summary["members"], strict=True):
        train = ms["train"]
        attempts = f" ({train['attempts']} attempts)" if (train["attempts"] or 1) > 1 else ""
        rows.append(
            "<tr>"
            f"<td>member {m.member}{'' if m.done else ' (training)'}</td>"
            f"<td>{_pm(m.final.reward, m.final.reward_stderr) if m.final else '–'}</td>"
            f"<td>{_pm(m.final.kl, m.final.kl_stderr) if m.final else '–'}</td>"
            f"<td>{_fmt(train['reward_last'])}</td><td>{_fmt(train['kl_anchor_last'])}</td>"
            f"<td>{train['steps']}{f' / {it.target_steps}' if it.target_steps else ''}</td>"
            f"<td>{format_seconds(train['seconds'])}{attempts}</td>"
            f"<td>{_fmt(train['tokens_per_second'], 1) if train['tokens_per_second'] is not None else '–'}</td>"
            "</tr>"
        )
    for label, p in (("SLERP of the members (η=1)", it.slerp), (f"next init (η={eta:g} from θ_init)", it.next_init),
                     ("this iteration's θ_init", it.init)):
        if p is not None:
            rows.append(f"<tr><td>{e(label)}</td><td>{_pm(p.reward, p.reward_stderr)}</td>"
                        f"<td>{_pm(p.kl, p.kl_stderr)}</td><td colspan=5></td></tr>")
    parts.append(
        "<table><tr><th>policy</th><th>eval reward</th><th>eval KL to SFT (nats)</th>"
        "<th>train reward (last 10%)</th><th>KL to anchor (last 10%)</th><th>steps</th><th>training time</th>"
        "<th>tokens/s</th></tr>" + "".join(rows) + "</table>"
    )
    if it.front:
        head = "".join(f"<th>η={p.eta:g}</th>" if p.eta is not None else "<th>?</th>" for p in it.front)
        rew = "".join(f"<td>{_pm(p.reward, p.reward_stderr)}</td>" for p in it.front)
        kl = "".join(f"<td>{_pm(p.kl, p.kl_stderr)}</td>" for p in it.front)
        parts.append(f"<table><tr><th>LiTI front</th>{head}</tr><tr><td>reward</td>{rew}</tr>"
                     f"<tr><td>KL to SFT (nats)</td>{kl}</tr></table>")
    else:
        parts.append('<p class="missing">front not evaluated yet</p>')
    merge_t = it.timings.get(f"i{it.iteration}-merge")
    eval_t = it.timings.get(f"i{it.iteration}-eval")
    merge_s = merge_t.seconds if merge_t and merge_t.seconds is not None else summary["merge_seconds"]
    eval_s = eval_t.seconds if eval_t and eval_t.seconds is not None else summary["eval_seconds"]
    bits = [f"merge {format_seconds(merge_s)}", f"evaluation {format_seconds(eval_s)}"]
    if summary["angles_mean_deg"] is not None:
        bits.append(f"mean angle between task vectors {summary['angles_mean_deg']:.1f}°")
    if summary["best_reward_at_kl"] is not None:
        bits.append(f"front reward at the reference KL {_fmt(summary['best_reward_at_kl'])}")
    parts.append(f"<p class=meta>{e('; '.join(bits))}</p>")
    return "\n".join(parts)


def render_html(data: RunData, summary: dict[str, Any], figures: Mapping[str, bytes]) -> str:
    e = html.escape
    h = summary["headline"]
    eta = data.liti_eta
    cards = [
        ("iterations evaluated", f"{h['iterations_evaluated']} / {h['iterations_total']}"),
        (f"front reward at KL {_fmt(h['reference_kl'])} (iteration {h['iteration']})", _fmt(h["best_reward_at_kl"])),
        ("same, first iteration", _fmt(h["best_reward_at_kl_first"])),
        (f"hypervolume (iteration {h['iteration']})", _fmt(h["hypervolume"])),
        ("SFT reward", _fmt((h["sft"] or {}).get("reward"))),
        ("run wall time", format_seconds(h["wall_seconds"])),
    ]
    card_html = "".join(f'<div class=card><div class=v>{e(v)}</div><div class=k>{e(k)}</div></div>' for k, v in cards)
    settings = (
        f"<pre>{e(yaml.safe_dump(data.document, sort_keys=False, allow_unicode=True))}</pre>"
        if data.document
        else '<p class="missing">the WarpRun document was not given; run <code>kwarp report warprun.yaml</code> '
        "to include it</p>"
    )
    iterations = "\n".join(
        _iteration_html(it, s, eta) for it, s in zip(data.iterations, summary["iterations"], strict=True)
    ) or '<p class="missing">no iteration has started</p>'
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kwarp report: {e(data.run)}</title>
<style>{_CSS}</style></head>
<body>
<h1>WARP run <code>{e(data.run)}</code></h1>
<p class=meta>Report generated {e(generated)}. WARP aligns a policy in iterations: M policies are trained with
reinforcement learning from the same start, their weights are merged (SLERP), and the merge is interpolated back
towards the start (LiTI) to trace a trade-off between reward and drift from the SFT policy.</p>
<div class=headline>{card_html}</div>
<p class=caption><b>Front reward at KL k</b>: the reward of an iteration's front at KL k, interpolated linearly
between its measured points; k is the KL of the first iteration's policy at η = {eta:g} (where the next iteration
starts), so the number compares iterations at equal drift. <b>Hypervolume</b>: the area of the KL–reward plane
that the front's points dominate (less KL and more reward), above the SFT policy's reward and left of KL
{_fmt(h['reference_hv_kl'])} nats, the largest KL of any front; larger is better.</p>

<h2>Pareto fronts</h2>
<figure>{_img("pareto.png", figures["pareto.png"], "KL-reward Pareto fronts")}
<figcaption class=caption>Each coloured line is one iteration's front: the policies between the SFT model (η = 0)
and the merged policy (η = 1), measured on held-out prompts; up and to the left is better (more reward for less
drift from the SFT policy). Bars are ± one standard error.</figcaption></figure>

<h2>Iterations</h2>
{iterations}

<h2>Training curves</h2>
<figure>{_img("curves.png", figures["curves.png"], "training curves")}
<figcaption class=caption>Per member: reward of the sampled training batches, KL to the EMA anchor the policy is
penalised against, and KL to the iteration's starting policy.</figcaption></figure>

<h2>Angles between task vectors</h2>
<figure>{_img("angles.png", figures["angles.png"], "angles between task vectors")}
<figcaption class=caption>The angle between the members' weight updates, per layer group. Near 90°, the updates
are nearly orthogonal: SLERP then keeps their norm where a plain average would shrink it.</figcaption></figure>

<h2>Settings</h2>
{settings}
</body></html>
"""


# ------------------------------------------------------------------ writing


def default_out_dir(store: Store, run: str) -> Path:
    """The store's own report folder for a file:// store; ./<run>-report otherwise."""
    if isinstance(store, FileStore):
        return store.path(layout.report_prefix(run))
    return Path.cwd() / f"{run}-report"


def write_report(
    store: Store,
    run_name: str,
    spec: WarpRun | WarpRunSpec | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write report.html, the figures and summary.json for a run; return the path of report.html.

    Files go to `out_dir` (default: `default_out_dir`) and, unless that folder already is the
    store's report folder, to the store under `layout.report_prefix(run_name)` too. report.html is
    written last in both places, so a reader that finds it finds the rest. Safe to call while the
    run is in progress: it shows what exists.
    """
    data = load_run(store, run_name, spec)
    summary = build_summary(data)
    figures = {
        "pareto.png": pareto_figure(data),
        "curves.png": curves_figure(data),
        "angles.png": angles_figure(data),
    }
    files: dict[str, bytes] = dict(figures)
    files["summary.json"] = json.dumps(summary, indent=1, allow_nan=False).encode()
    files["report.html"] = render_html(data, summary, figures).encode()

    out = Path(out_dir).expanduser().resolve() if out_dir is not None else default_out_dir(store, run_name)
    in_store = isinstance(store, FileStore) and out == store.path(layout.report_prefix(run_name))
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():  # dicts keep insertion order: report.html comes last
        _write_atomic(out / name, content)
    if not in_store:
        prefix = layout.report_prefix(run_name)
        for name, content in files.items():
            store.put_bytes(prefix + name, content)
    return out / "report.html"


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(content)
    os.replace(tmp, path)


# ------------------------------------------------------------------ CLI


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_OR_FILE",
                        help="a WarpRun YAML file (its store is spec.storage), or a run name with --store")
    parser.add_argument("--store", metavar="URL",
                        help="store holding the run: a path, file:///abs/path or s3://bucket/prefix")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: <store>/<run>/report/ for a local store, else ./<run>-report/)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from kwarp.spec import load

    spec = None
    if Path(args.run).is_file():
        spec = load(args.run)
        run = spec.name
        store = open_store(args.store or spec.spec.storage.url, spec.spec.storage)
    elif args.run.endswith((".yaml", ".yml", ".json")):
        raise UserError(f"{args.run}: no such file; give a WarpRun YAML file or a run name with --store URL")
    else:
        if not args.store:
            raise UserError(f"'{args.run}' is not a file: to report a run by name, add --store URL")
        run, store = args.run, open_store(args.store)
    if not store.list(layout.run_prefix(run)):
        raise UserError(f"nothing stored for run '{run}' under {store.describe()}: check the run name and the store")

    path = write_report(store, run, spec, args.out)
    summary = json.loads((path.parent / "summary.json").read_text())
    h = summary["headline"]
    print(f"report: {path}")
    print(f"iterations evaluated: {h['iterations_evaluated']}/{h['iterations_total']}")
    if h["best_reward_at_kl"] is not None:
        print(
            f"front reward at KL {h['reference_kl']:.3f}: {h['best_reward_at_kl']:.3f} "
            f"(iteration {h['iteration']}; first iteration {_fmt(h['best_reward_at_kl_first'])}); "
            f"hypervolume {_fmt(h['hypervolume'])}"
        )
    return 0
