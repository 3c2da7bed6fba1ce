"""The Pareto front as data, and the choice of one policy on it (`kwarp export`). Pure: no I/O.

A front is what an iteration's evaluation measured along the LiTI path
θ_η = (1 − η)·θ_sft + η·θ_slerp: reward and KL(π_η ‖ π_sft) at a grid of η. Between two evaluated
η the front is read as the straight line between them (η, reward and KL each interpolated
linearly); the chosen policy is then evaluated for real, and that measurement is what counts.

Choice within a KL budget K: the most reward among
  - every evaluated point with KL ≤ K, and
  - every η where a segment between two evaluated points crosses KL = K.
Along a segment the interpolated reward is linear, so its best point within the budget is one of
these. The KL along the path is convex near θ_sft (it grows like η²), so the straight line tends to
overstate the KL between grid points; the export measures the chosen policy to confirm it (within
one standard error of the estimate). On a tie in reward the smaller η wins: the same reward for
less drift.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FrontPoint:
    eta: float
    reward: float
    kl: float
    reward_stderr: float | None = None
    kl_stderr: float | None = None
    gold: float | None = None


@dataclass(frozen=True)
class Choice:
    """A point on the front: its η and what the front predicts there (interpolated unless evaluated)."""

    eta: float
    reward: float | None
    kl: float | None
    gold: float | None
    between: tuple[float, float]  # the evaluated η on either side; equal when η itself was evaluated
    rule: str  # how it was chosen, for people: "most reward within KL 2" or "η = 0.3 as asked"

    @property
    def evaluated(self) -> bool:
        return self.between[0] == self.between[1]


class FrontError(ValueError):
    """No point of the front fits the request; the message says what the front offers."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def points_of(evaluation: Mapping[str, Any]) -> list[FrontPoint]:
    """The front of an eval.json, sorted by η; points without a finite η, reward and KL are skipped."""
    out = []
    for p in evaluation.get("front") or []:
        if not isinstance(p, Mapping):
            continue
        eta, reward, kl = _number(p.get("eta")), _number(p.get("reward")), _number(p.get("kl"))
        if eta is None or reward is None or kl is None:
            continue
        out.append(FrontPoint(eta=eta, reward=reward, kl=kl, reward_stderr=_number(p.get("reward_stderr")),
                              kl_stderr=_number(p.get("kl_stderr")), gold=_number(p.get("gold"))))  # fmt: skip
    return sorted(out, key=lambda q: q.eta)


def _lerp(a: float | None, b: float | None, t: float) -> float | None:
    if a is None or b is None:
        return None
    return a + t * (b - a)


def _on_segment(a: FrontPoint, b: FrontPoint, t: float, rule: str) -> Choice:
    if t <= 0.0:
        return Choice(a.eta, a.reward, a.kl, a.gold, (a.eta, a.eta), rule)
    if t >= 1.0:
        return Choice(b.eta, b.reward, b.kl, b.gold, (b.eta, b.eta), rule)
    return Choice(
        eta=a.eta + t * (b.eta - a.eta),
        reward=_lerp(a.reward, b.reward, t),
        kl=_lerp(a.kl, b.kl, t),
        gold=_lerp(a.gold, b.gold, t),
        between=(a.eta, b.eta),
        rule=rule,
    )


def _check(points: Sequence[FrontPoint]) -> None:
    if not points:
        raise FrontError("the front has no evaluated point")
    etas = [p.eta for p in points]
    if etas != sorted(etas) or len(set(etas)) != len(etas):
        raise FrontError(f"front points must have distinct η in increasing order, got {etas}")


def at_eta(points: Sequence[FrontPoint], eta: float) -> Choice:
    """The front at a given η: the evaluated point, or the line between its neighbours. Outside the
    evaluated range nothing is predicted (reward and KL None); the export still measures it."""
    _check(points)
    if not 0.0 <= eta <= 1.0:
        raise FrontError(f"η must lie in [0, 1], got {eta}")
    rule = f"η = {eta:g} as asked"
    for a, b in zip(points, points[1:], strict=False):
        if a.eta <= eta <= b.eta:
            return _on_segment(a, b, (eta - a.eta) / (b.eta - a.eta), rule)
    if eta == points[0].eta:  # a front of one point
        return _on_segment(points[0], points[0], 0.0, rule)
    return Choice(eta, None, None, None, (eta, eta), rule + " (outside the evaluated η: no prediction)")


def within_budget(points: Sequence[FrontPoint], budget: float) -> Choice:
    """The point with the most reward whose KL is at most `budget` (see the module docstring)."""
    _check(points)
    if not math.isfinite(budget) or budget < 0.0:
        raise FrontError(f"the KL budget must be a finite number >= 0, got {budget}")
    rule = f"most reward within KL {budget:.4g}"
    candidates: list[Choice] = [_on_segment(p, p, 0.0, rule) for p in points if p.kl <= budget]
    for a, b in zip(points, points[1:], strict=False):
        if (a.kl - budget) * (b.kl - budget) < 0.0:  # the segment crosses KL = budget strictly inside
            candidates.append(_on_segment(a, b, (budget - a.kl) / (b.kl - a.kl), rule))
    if not candidates:
        low = min(points, key=lambda p: p.kl)
        raise FrontError(
            f"no point of the front lies within KL {budget:g}: the least KL evaluated is {low.kl:.4g} "
            f"(η = {low.eta:g}); raise the budget, or evaluate smaller η (spec.evaluation.etas), or pass --eta"
        )
    return max(candidates, key=lambda c: (c.reward, -c.eta))


def table(points: Iterable[FrontPoint]) -> list[dict[str, float | None]]:
    """The front as rows of plain numbers (for a model card, a report or a status)."""
    return [
        {"eta": p.eta, "reward": p.reward, "reward_stderr": p.reward_stderr, "kl": p.kl, "kl_stderr": p.kl_stderr,
         "gold": p.gold}
        for p in points
    ]  # fmt: skip


__all__ = ["Choice", "FrontError", "FrontPoint", "at_eta", "points_of", "table", "within_budget"]
