"""The reproduction's pre-registered criteria: the paper's four findings as paired, bootstrapped statistics.

Fixed in code before the full run that judges them (docs/reproduction.md says which commit). Every
statistic is computed from evaluated points only (kwarp.run.stats.PromptPoint: per-prompt means of
reward, gold reward and KL to θ_sft), the same way for the measured data and for every bootstrap
replicate, and averaged over seeds. Verdicts follow kwarp.run.stats: `holds` when the one-sided 95%
lower bound is above 0, `fails` when the one-sided 95% upper bound is below δ, else `unresolved`.
δ = 0.02 reward (DELTA): the smallest effect the evaluation is sized to resolve; 0.1 nats for the
one statistic measured in KL (DELTA_KL).

Names of the points of one seed (what `load_inputs` in reproduce.py builds):

    sft                      θ_sft (the η = 0 point of iteration 0's front)
    front<i>/eta=<η>         WARP (M = 2) iteration i's front: (1−η)·θ_sft + η·θ_slerp,i
    m2/member<m>             member m of iteration 0 (M = 2)       m4/member<m>  (M = 4)
    m2/member<m>/eta=<η>     member m's own LiTI path (1−η)·θ_sft + η·θ_m
    m4/eta=<η>               the M = 4 run's SLERP front (iteration 0)
    m2/linear, m4/linear     linear average of the members
    ema<m>/step=<t>          trajectory of WARP member m of iteration 0 (EMA anchor), every few steps
    sft-<β>/step=<t>         trajectory of the SFT-anchored run with KL coefficient β

Trajectories start at `sft` (step 0). A curve's reward at KL k is `rundata.reward_at_kl` on its
polyline (points in step or η order): linear interpolation in KL, no extrapolation.

1 anchor   1a (verdict) mean over the KL grid k_j = j·K/10, j = 1..10, of [mean over EMA members of
              their trajectory's reward at k_j] − [upper envelope of all SFT-anchored trajectories
              (β ∈ SFT_BETAS) at k_j]; K = min(smallest final-trajectory max KL of the EMA members,
              largest max KL of the SFT-anchored trajectories).
           1b for each large β (0.3, 1): EMA members' mean final reward − the SFT β run's final reward
              (the paper: strong β plateaus below).
           1c for each small β (0, 0.01): KL at which the SFT β trajectory first reaches the EMA
              members' mean final reward (its largest KL if it never does) − the EMA members' mean
              final KL, in nats (the paper: weak β needs more KL to get there).
2 merge    for M = 2 and M = 4, iteration 0:
           2a (verdict) SLERP − mean member reward;   2c (verdict) SLERP − linear average;
           2b SLERP − member m, each m;   2d mean over members of the mean over k_j = j·K_m/10 of
              [SLERP front at k_j − member m's LiTI front at k_j], K_m the smaller of the two max KLs;
           2e SLERP(M = 4) − SLERP(M = 2) (more members is better).
           Verdict: holds if 2a and 2c hold for both M; fails if any of them fails; else unresolved.
3 liti     mean over the EMA members' trajectory points inside iteration 0's front KL range of
           [front reward at the point's KL − the point's reward].
4 iterate  4a (verdict) A(last) − A(first), A(i) = (1/K)·∫_0^K [front_i(k) − r_sft] dk, the mean
              height of front i above θ_sft up to K = the smaller of the two fronts' max KL
              (trapezoid rule on 100 steps);
           4b A(i+1) − A(i) for each pair of consecutive iterations (diminishing returns);
           4c front_last(k) − front_first(k) at k = K/4, K/2, 3K/4, K.

Each statistic is also computed on the gold reward in place of the reward model's score (same
definition, `gold` beside `reward` in claims.json): whether the reward model's gain is a gain for the
hidden judge too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kwarp.run import stats

DELTA = 0.02
DELTA_KL = 0.1
SFT_BETAS = (0.0, 0.01, 0.1, 0.3, 1.0)
LARGE_BETAS = (0.3, 1.0)
SMALL_BETAS = (0.0, 0.01)
MEMBERS_LARGE = 4
GRID = 10
AREA_STEPS = 100
LEVELS = (0.25, 0.5, 0.75, 1.0)

View = Mapping[str, stats.Vec]
Curve = tuple[np.ndarray, np.ndarray]  # (KL [n, R], reward [n, R]): n points in order, R resamples


def beta_label(beta: float) -> str:
    return f"b{round(beta * 1000)}"  # 0 -> b0, 0.01 -> b10, 0.3 -> b300, 1 -> b1000 (DNS-safe)


def eta_key(eta: float) -> str:
    return f"{eta:g}"


# ------------------------------------------------------------------------ curves (pure, vectorised over R)
# Every function takes arrays whose last axis is the R resamples and returns NaN where undefined.


class _GoldView(Mapping[str, stats.Vec]):
    """The same points with the gold reward in place of the reward model's."""

    def __init__(self, view: View):
        self._view = view

    def __getitem__(self, name: str) -> stats.Vec:
        p = self._view[name]
        if p.gold is None:
            raise KeyError(f"{name}: no gold reward measured")
        return replace(p, reward=p.gold)

    def __iter__(self) -> Iterator[str]:
        return iter(self._view)

    def __len__(self) -> int:
        return len(self._view)


def as_gold(view: View) -> View:
    return _GoldView(view)


def curve(view: View, names: Sequence[str]) -> Curve:
    """The points in the given order (step or η order) as a polyline."""
    return np.stack([view[n].kl for n in names]), np.stack([view[n].reward for n in names])


def at(c: Curve, k: np.ndarray) -> np.ndarray:
    """The polyline's reward at KL k (shape [..., R]), as rundata.reward_at_kl: linear interpolation
    on every segment whose KL range holds k (and any point exactly at k), the largest of them;
    NaN outside the curve's KL range."""
    kl, r = c
    k = np.asarray(k, dtype=float)
    kk = k[..., None, :]  # [..., 1, R]
    a, b, ra, rb = kl[:-1], kl[1:], r[:-1], r[1:]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    with np.errstate(all="ignore"):
        t = (kk - a) / (b - a)
        seg = np.where((lo <= kk) & (kk <= hi) & (hi > lo), ra + (rb - ra) * t, -np.inf)
    exact = np.where(kl == kk, r, -np.inf)
    best = np.maximum(seg.max(axis=-2, initial=-np.inf), exact.max(axis=-2, initial=-np.inf))
    return np.where(np.isfinite(best), best, np.nan)


def max_kl(c: Curve) -> np.ndarray:
    return c[0].max(axis=0)


def grid(upper: np.ndarray, n: int = GRID) -> np.ndarray:
    """[n, R]: upper·j/n for j = 1..n (NaN where upper <= 0: no range to compare on)."""
    upper = np.where(np.asarray(upper, dtype=float) > 0, upper, np.nan)
    return upper[None, :] * (np.arange(1, n + 1)[:, None] / n)


def _nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def mean_gap(a: Curve, b: Curve, upper: np.ndarray) -> np.ndarray:
    """Mean over the KL grid up to `upper` of a(k) − b(k), over grid points defined on both."""
    ks = grid(upper)
    return _nanmean(at(a, ks) - at(b, ks))


def mean_height(c: Curve, floor: np.ndarray, upper: np.ndarray, steps: int = AREA_STEPS) -> np.ndarray:
    """(1/K)·∫_0^K [curve(k) − floor] dk by the trapezoid rule; NaN where the curve does not span [0, K]."""
    upper = np.where(np.asarray(upper, dtype=float) > 0, upper, np.nan)
    ks = upper[None, :] * (np.arange(steps + 1)[:, None] / steps)
    h = at(c, ks) - floor
    return ((h[1:] + h[:-1]) / 2.0).sum(axis=0) / steps  # a NaN anywhere makes the sum NaN


def first_kl_reaching(c: Curve, target: np.ndarray) -> np.ndarray:
    """KL where the polyline first reaches `target` reward (interpolated); its largest KL if never."""
    kl, r = c
    reached = r >= target
    j = reached.argmax(axis=0)  # first index at or above the target (0 if none: handled below)
    cols = np.arange(kl.shape[1])
    prev = np.maximum(j - 1, 0)
    with np.errstate(all="ignore"):
        t = (target - r[prev, cols]) / (r[j, cols] - r[prev, cols])
        crossing = np.where(j == 0, kl[0], kl[prev, cols] + (kl[j, cols] - kl[prev, cols]) * t)
    return np.where(reached.any(axis=0), crossing, kl.max(axis=0))


# ------------------------------------------------------------------------ the statistics (pure)


def trajectory_names(prefix: str, steps: Sequence[int]) -> list[str]:
    return ["sft", *(f"{prefix}/step={t}" for t in steps)]


def anchor_envelope_gap(view: View, ema: Sequence[list[str]], sft: Sequence[list[str]]) -> np.ndarray:
    """1a: mean over the KL grid of the EMA members' mean reward minus the SFT runs' upper envelope."""
    ema_c = [curve(view, n) for n in ema]
    sft_c = [curve(view, n) for n in sft]
    upper = np.minimum(np.min([max_kl(c) for c in ema_c], axis=0), np.max([max_kl(c) for c in sft_c], axis=0))
    ks = grid(upper)
    ema_r = np.mean([at(c, ks) for c in ema_c], axis=0)  # NaN unless every member is defined there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        envelope = np.nanmax([at(c, ks) for c in sft_c], axis=0)
    return _nanmean(ema_r - envelope)


def _final(view: View, ema: Sequence[list[str]], field: str) -> np.ndarray:
    return np.mean([getattr(view[n[-1]], field) for n in ema], axis=0)


def final_reward_gap(view: View, ema: Sequence[list[str]], other: list[str]) -> np.ndarray:
    """1b: EMA members' mean final reward minus the other run's final reward."""
    return _final(view, ema, "reward") - view[other[-1]].reward


def kl_to_reach_gap(view: View, ema: Sequence[list[str]], other: list[str]) -> np.ndarray:
    """1c: KL the other run needs to reach the EMA members' mean final reward, minus their mean final KL."""
    return first_kl_reaching(curve(view, other), _final(view, ema, "reward")) - _final(view, ema, "kl")


def liti_above_trajectories(view: View, front: list[str], ema: Sequence[list[str]]) -> np.ndarray:
    """3: mean of [front(k) − reward] over the EMA trajectory points whose KL the front spans."""
    f = curve(view, front)
    points = [view[n] for names in ema for n in names[1:]]  # step 0 is θ_sft, the front's own first point
    gaps = np.stack([at(f, p.kl[None, :])[0] - p.reward for p in points])
    return _nanmean(gaps)


def front_area_gap(view: View, later: list[str], earlier: list[str]) -> np.ndarray:
    """4a/4b: mean height above θ_sft of the later front minus the earlier's, up to the smaller max KL."""
    a, b = curve(view, later), curve(view, earlier)
    upper = np.minimum(max_kl(a), max_kl(b))
    floor = view["sft"].reward
    return mean_height(a, floor, upper) - mean_height(b, floor, upper)


def front_level_gap(view: View, later: list[str], earlier: list[str], level: float) -> np.ndarray:
    """4c: later front minus earlier front at KL = level · (the smaller max KL)."""
    a, b = curve(view, later), curve(view, earlier)
    k = (level * np.minimum(max_kl(a), max_kl(b)))[None, :]
    return (at(a, k) - at(b, k))[0]


# ------------------------------------------------------------------------ the layout of a seed


def front_names(i: int, etas: Sequence[float]) -> list[str]:
    return [f"front{i}/eta={eta_key(e)}" for e in sorted(etas)]


def member_front(prefix: str, m: int, etas: Sequence[float]) -> list[str]:
    """A member's own LiTI path: θ_sft, the evaluated η in (0, 1), then the member itself (η = 1)."""
    inner = [f"{prefix}/member{m}/eta={eta_key(e)}" for e in sorted(etas) if 0 < e < 1]
    return ["sft", *inner, f"{prefix}/member{m}"]


def large_front(etas: Sequence[float]) -> list[str]:
    return ["sft", *(f"m{MEMBERS_LARGE}/eta={eta_key(e)}" for e in sorted(etas) if e > 0)]


Criterion = dict[str, Any]


def _criterion(
    cid: str,
    text: str,
    draws: stats.Resamples,
    fn: Callable[[View], np.ndarray],
    *,
    delta: float = DELTA,
    gold: bool = True,
) -> Criterion:
    out: Criterion = {"id": cid, "statistic": text}
    out |= stats.estimate(draws, fn, delta=delta).to_json()
    if gold and all(all(p.gold is not None for p in s.values()) for s in draws.full if s):
        g = stats.estimate(draws, lambda view: fn(as_gold(view)), delta=delta).to_json()
        out["gold"] = {k: g[k] for k in ("value", "lower_95", "upper_95", "per_seed")}
    return out


def combined(verdicts: Sequence[str]) -> str:
    """All must hold for `holds`; any `fails` makes it fail; otherwise unresolved."""
    if verdicts and all(v == stats.HOLDS for v in verdicts):
        return stats.HOLDS
    if any(v == stats.FAILS for v in verdicts):
        return stats.FAILS
    return stats.UNRESOLVED


STATEMENTS = {
    "anchor": "EMA anchor beats the SFT anchor: at equal KL it reaches more reward; SFT-anchored runs either "
    "plateau (large β) or need more KL (small β)",
    "merge": "SLERP of M runs beats the runs and linear averaging in reward (at slightly higher KL); more M is better",
    "liti": "LiTI fronts lie above the REINFORCE training trajectories",
    "iterate": "each WARP iteration moves the front up, with diminishing returns",
}


def evaluate_claims(
    front_seeds: Sequence[stats.SeedPoints],
    traj_seeds: Sequence[stats.SeedPoints],
    layout: Mapping[str, Any],
    *,
    replicates: int = stats.REPLICATES,
) -> list[dict[str, Any]]:
    """The four findings from each seed's points (two groups: fronts, and trajectories with the
    first prompts of the fronts). `layout` gives what was evaluated: iterations, etas (the WARP
    fronts), member_etas (members' own LiTI paths), large_etas (the M = 4 front), steps (trajectory
    steps per run prefix: "ema0", "sft-b100", ...). Pure."""
    iters: int = layout["iterations"]
    etas: list[float] = layout["etas"]
    member_etas: list[float] = layout["member_etas"]
    steps: Mapping[str, list[int]] = layout["steps"]
    fronts = stats.resample(front_seeds, replicates=replicates, rng_seed=1)
    trajs = stats.resample(traj_seeds, replicates=replicates, rng_seed=2)

    ema = [trajectory_names(f"ema{m}", steps[f"ema{m}"]) for m in range(2)]
    sft = {b: trajectory_names(f"sft-{beta_label(b)}", steps[f"sft-{beta_label(b)}"]) for b in SFT_BETAS}
    anchor = [
        _criterion("1a", "EMA trajectory minus the upper envelope of the SFT-anchored trajectories, mean over a KL grid",
                   trajs, lambda v: anchor_envelope_gap(v, ema, list(sft.values()))),
        *(
            _criterion(f"1b beta={b:g}", f"EMA final reward minus the SFT-anchored beta={b:g} run's final reward",
                       trajs, lambda v, b=b: final_reward_gap(v, ema, sft[b]))
            for b in LARGE_BETAS
        ),
        *(
            _criterion(f"1c beta={b:g}", f"KL the SFT-anchored beta={b:g} run needs to reach the EMA final reward, "
                       "minus the EMA final KL (nats)",
                       trajs, lambda v, b=b: kl_to_reach_gap(v, ema, sft[b]), delta=DELTA_KL, gold=False)
            for b in SMALL_BETAS
        ),
    ]

    merge: list[Criterion] = []
    primary: list[str] = []
    for m_count, slerp, prefix in ((2, "front0/eta=1", "m2"), (MEMBERS_LARGE, f"m{MEMBERS_LARGE}/eta=1", f"m{MEMBERS_LARGE}")):
        members = [f"{prefix}/member{m}" for m in range(m_count)]
        slerp_front = front_names(0, etas) if m_count == 2 else large_front(layout["large_etas"])
        mf = [member_front("m2" if m < 2 else prefix, m, member_etas) for m in range(m_count)]
        a = _criterion(f"2a M={m_count}", "SLERP minus the mean member (reward)", fronts,
                       lambda v, s=slerp, ms=members: v[s].reward - np.mean([v[n].reward for n in ms], axis=0))
        c = _criterion(f"2c M={m_count}", "SLERP minus the linear average of the members", fronts,
                       lambda v, s=slerp, p=prefix: v[s].reward - v[f"{p}/linear"].reward)
        primary += [a["verdict"], c["verdict"]]
        merge += [a, c]
        merge += [
            _criterion(f"2b M={m_count} member={m}", f"SLERP minus member {m}", fronts,
                       lambda v, s=slerp, n=n: v[s].reward - v[n].reward)
            for m, n in enumerate(members)
        ]
        merge.append(
            _criterion(f"2d M={m_count}", "SLERP's LiTI front minus each member's LiTI front at equal KL, mean over "
                       "a KL grid and over members", fronts,
                       lambda v, sf=slerp_front, mf=mf: _front_vs_members(v, sf, mf))
        )
        merge.append(
            _criterion(f"KL M={m_count}", "SLERP's KL minus the mean member's KL (nats; the paper: slightly higher)",
                       fronts, lambda v, s=slerp, ms=members: v[s].kl - np.mean([v[n].kl for n in ms], axis=0),
                       delta=DELTA_KL, gold=False)
        )
    merge.append(
        _criterion("2e", f"SLERP of M={MEMBERS_LARGE} minus SLERP of M=2", fronts,
                   lambda v: v[f"m{MEMBERS_LARGE}/eta=1"].reward - v["front0/eta=1"].reward)
    )

    f0_traj = front_names(0, etas)
    liti = [
        _criterion("3", "iteration 0's front minus the EMA members' trajectory points at their KL, mean over points",
                   trajs, lambda v: liti_above_trajectories(v, f0_traj, ema))
    ]

    first, last = front_names(0, etas), front_names(iters - 1, etas)
    iterate = [
        _criterion("4a", f"mean height of front {iters - 1} above SFT minus front 0's, up to the smaller max KL",
                   fronts, lambda v: front_area_gap(v, last, first)),
        *(
            _criterion(f"4b {i + 1}-{i}", f"mean height of front {i + 1} minus front {i}'s", fronts,
                       lambda v, i=i: front_area_gap(v, front_names(i + 1, etas), front_names(i, etas)))
            for i in range(iters - 1)
        ),
        *(
            _criterion(f"4c k={lvl:g}K", f"front {iters - 1} minus front 0 at KL = {lvl:g} x the smaller max KL",
                       fronts, lambda v, lvl=lvl: front_level_gap(v, last, first, lvl))
            for lvl in LEVELS
        ),
    ]

    def finding(fid: str, parts: list[Criterion], verdict: str, rule: str) -> dict[str, Any]:
        return {"id": fid, "statement": STATEMENTS[fid], "verdict": verdict, "verdict_rule": rule, "criteria": parts}

    return [
        finding("anchor", anchor, anchor[0]["verdict"], "the verdict of 1a"),
        finding("merge", merge, combined(primary), "holds if 2a and 2c hold for M=2 and M=4; fails if any fails"),
        finding("liti", liti, liti[0]["verdict"], "the verdict of 3"),
        finding("iterate", iterate, iterate[0]["verdict"], "the verdict of 4a"),
    ]


def _front_vs_members(view: View, slerp_front: list[str], member_fronts: Sequence[list[str]]) -> np.ndarray:
    s = curve(view, slerp_front)
    gaps = [mean_gap(s, m, np.minimum(max_kl(s), max_kl(m))) for m in (curve(view, n) for n in member_fronts)]
    return _nanmean(np.stack(gaps))


__all__ = ["DELTA", "DELTA_KL", "SFT_BETAS", "beta_label", "evaluate_claims"]
