"""Paired bootstrap over prompts and seeds, one-sided 95% intervals and three-way verdicts.

Every evaluated point (a front's θ_η, a member, a trajectory step) keeps one value per eval prompt:
the mean over that prompt's samples of the reward, the gold reward and the KL to θ_sft
(eval.json / metrics.jsonl `per_prompt`). Points of one seed share the prompts and the sampling
seed, so a statistic that compares points (a difference, an interpolation, an area) is computed on
the *same* resampled prompts for all of them: the comparison is paired.

The bootstrap is hierarchical, as the experiment is: a replicate draws S seeds with replacement out
of the S seeds, and for each drawn seed a fresh resample of its P prompts with replacement; the
statistic is computed per drawn seed from the resampled per-prompt means, then averaged over the
drawn seeds. Training randomness (which seed) and evaluation randomness (which prompts, which
samples) both show in the spread.

    lower = 5th percentile, upper = 95th percentile of the replicates

`lower` is the one-sided 95% lower bound, `upper` the one-sided 95% upper bound. The verdict of a
claim "statistic > 0", with δ the smallest effect the evaluation was sized to resolve:

    holds       lower > 0                 the effect is positive
    fails       lower <= 0 and upper < δ  an effect of δ or more is excluded
    unresolved  otherwise                 the interval is too wide to tell

Pure functions of plain data; numpy only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kwarp.run.rundata import Point

REPLICATES = 2000
LOWER_Q, UPPER_Q = 0.05, 0.95  # one-sided 95% bounds
HOLDS, FAILS, UNRESOLVED = "holds", "fails", "unresolved"
_KEYS = ("reward", "kl", "gold")


@dataclass(frozen=True)
class PromptPoint:
    """A point's per-prompt means (same prompt order across every point of a seed)."""

    reward: np.ndarray
    kl: np.ndarray
    gold: np.ndarray | None = None
    eta: float | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], prompts: int | None = None) -> PromptPoint | None:
        """From an eval.json point or a metrics.jsonl `eval` block; the first `prompts` prompts only."""
        per = raw.get("per_prompt") if isinstance(raw, Mapping) else None
        if not isinstance(per, Mapping) or "reward" not in per or "kl" not in per:
            return None
        cut = slice(0, prompts)
        gold = per.get("gold")
        eta = raw.get("eta")
        return cls(
            reward=np.asarray(per["reward"], dtype=float)[cut],
            kl=np.asarray(per["kl"], dtype=float)[cut],
            gold=np.asarray(gold, dtype=float)[cut] if gold is not None else None,
            eta=float(eta) if isinstance(eta, int | float) else None,
        )

    @property
    def prompts(self) -> int:
        return int(self.reward.shape[0])

    def mean(self) -> Point:
        return Point(
            reward=float(self.reward.mean()),
            kl=float(self.kl.mean()),
            eta=self.eta,
            gold=float(self.gold.mean()) if self.gold is not None else None,
        )


@dataclass(frozen=True)
class Vec:
    """A point's means under R prompt resamples at once: reward, kl and gold are arrays of shape [R]."""

    reward: np.ndarray
    kl: np.ndarray
    gold: np.ndarray | None = None
    eta: float | None = None


# A seed's points by name; names the criteria know ("front0/eta=0.3", "sft-b100/step=40", ...).
SeedPoints = Mapping[str, PromptPoint]
# A statistic maps a seed's points (each a Vec over R resamples) to an array [R]; NaN where undefined.
# Statistics are written with numpy broadcasting, so one call covers every bootstrap replicate.
Statistic = Callable[[Mapping[str, Vec]], np.ndarray]


@dataclass
class Estimate:
    """A statistic over seeds: point estimate, per-seed values, bootstrap bounds and the verdict."""

    value: float | None
    per_seed: list[float | None]
    per_seed_bounds: list[tuple[float | None, float | None]]  # prompts resampled, that seed only
    lower: float | None
    upper: float | None
    replicates: int
    defined: int  # replicates where the statistic was defined
    delta: float
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        self.verdict = verdict(self.lower, self.upper, self.delta)

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "lower_95": self.lower,
            "upper_95": self.upper,
            "verdict": self.verdict,
            "delta": self.delta,
            "per_seed": self.per_seed,
            "per_seed_bounds_95": [list(b) for b in self.per_seed_bounds],
            "replicates": self.replicates,
            "replicates_defined": self.defined,
        }


def verdict(lower: float | None, upper: float | None, delta: float) -> str:
    """holds / fails / unresolved from the one-sided 95% bounds (module docstring)."""
    if lower is None or upper is None:
        return UNRESOLVED
    if lower > 0:
        return HOLDS
    if upper < delta:
        return FAILS
    return UNRESOLVED


def _stack(points: SeedPoints) -> tuple[list[str], np.ndarray, dict[str, float | None]]:
    """(names, array [P, 3·n] of reward/kl/gold per point, etas); a missing gold is NaN."""
    names = sorted(points)
    sizes = {points[n].prompts for n in names}
    if len(sizes) != 1:
        raise ValueError(f"points of one seed must share their prompts; got prompt counts {sorted(sizes)}")
    columns = []
    for n in names:
        p = points[n]
        gold = p.gold if p.gold is not None else np.full(p.prompts, np.nan)
        columns += [p.reward, p.kl, gold]
    return names, np.stack(columns, axis=1), {n: points[n].eta for n in names}


def vectors(points: SeedPoints, weights: np.ndarray | None = None) -> dict[str, Vec]:
    """Each point's means under prompt weights [R, P] (counts of resamples, each summing to P);
    without weights, the plain means (R = 1)."""
    names, data, etas = _stack(points)
    if weights is None:
        weights = np.ones((1, data.shape[0]))
    flat = weights @ data / data.shape[0]
    out = {}
    for j, n in enumerate(names):
        gold = flat[:, 3 * j + 2]
        out[n] = Vec(reward=flat[:, 3 * j], kl=flat[:, 3 * j + 1], gold=None if np.isnan(gold).all() else gold,
                     eta=etas[n])
    return out


def _quantiles(values: np.ndarray) -> tuple[float | None, float | None]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return None, None
    return float(np.quantile(v, LOWER_Q)), float(np.quantile(v, UPPER_Q))


@dataclass(frozen=True)
class Resamples:
    """The seeds' points under one set of bootstrap draws, shared by every statistic computed on them
    (so statistics of one group are evaluated on the very same resamples)."""

    full: list[dict[str, Vec] | None]  # per seed: plain means (R = 1)
    resampled: list[dict[str, Vec] | None]  # per seed: R = replicates × S prompt resamples
    drawn: np.ndarray  # [replicates, S]: the seeds replicate b draws
    replicates: int


def resample(seeds: Sequence[SeedPoints], *, replicates: int = REPLICATES, rng_seed: int = 0) -> Resamples:
    """Draw the hierarchical bootstrap: seeds with replacement, then each drawn seed's prompts."""
    rng = np.random.default_rng(rng_seed)
    n_seeds = len(seeds)
    full: list[dict[str, Vec] | None] = []
    resampled: list[dict[str, Vec] | None] = []
    for s in seeds:
        if not s:
            full.append(None)
            resampled.append(None)
            continue
        prompts = next(iter(s.values())).prompts
        counts = rng.multinomial(prompts, np.full(prompts, 1.0 / prompts), size=replicates * n_seeds).astype(float)
        full.append(vectors(s))
        resampled.append(vectors(s, counts))
    drawn = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    return Resamples(full, resampled, drawn, replicates)


def estimate(draws: Resamples, statistic: Statistic, *, delta: float) -> Estimate:
    """The statistic averaged over seeds, with its bootstrap bounds and verdict (module docstring)."""
    n_seeds, replicates = len(draws.full), draws.replicates
    per_seed: list[float | None] = []
    table = np.full((n_seeds, replicates * n_seeds), np.nan)
    for j, (full, res) in enumerate(zip(draws.full, draws.resampled, strict=True)):
        if full is None or res is None:
            per_seed.append(None)
            continue
        value = float(np.asarray(statistic(full), dtype=float).reshape(-1)[0])
        per_seed.append(None if np.isnan(value) else value)
        table[j] = np.asarray(statistic(res), dtype=float).reshape(-1)
    defined = [v for v in per_seed if v is not None]
    mean = float(np.mean(defined)) if defined else None
    # Replicate b draws seeds drawn[b, c] (with replacement); slot c uses that seed's resample b·S + c.
    rows = np.arange(replicates)[:, None] * n_seeds + np.arange(n_seeds)[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(table[draws.drawn, rows], axis=1)
    lower, upper = _quantiles(values)
    # Per seed: prompts resampled within that seed only (the evaluation's own precision).
    bounds = [_quantiles(table[j, rows[:, 0]]) for j in range(n_seeds)]
    return Estimate(mean, per_seed, bounds, lower, upper, replicates, int((~np.isnan(values)).sum()), delta)


def bootstrap(
    seeds: Sequence[SeedPoints],
    statistic: Statistic,
    *,
    delta: float,
    replicates: int = REPLICATES,
    rng_seed: int = 0,
) -> Estimate:
    """resample + estimate for a single statistic."""
    return estimate(resample(seeds, replicates=replicates, rng_seed=rng_seed), statistic, delta=delta)


def prompts_needed(sd_paired: float, delta: float, z_alpha: float = 1.645, z_power: float = 0.842) -> int:
    """Prompts for a one-sided 5% test to detect a paired difference δ with 80% power, given the
    per-prompt standard deviation of the difference: n = ((z_α + z_β) · sd / δ)²."""
    return int(np.ceil(((z_alpha + z_power) * sd_paired / delta) ** 2))


def paired_sd(a: PromptPoint, b: PromptPoint, key: str = "reward") -> float:
    """Standard deviation over prompts of the per-prompt difference a − b."""
    x, y = getattr(a, key), getattr(b, key)
    if x is None or y is None:
        raise ValueError(f"both points need per-prompt '{key}' values")
    return float(np.std(x - y, ddof=1))


__all__ = [
    "FAILS",
    "HOLDS",
    "UNRESOLVED",
    "Estimate",
    "PromptPoint",
    "Resamples",
    "Vec",
    "bootstrap",
    "estimate",
    "paired_sd",
    "prompts_needed",
    "resample",
    "vectors",
    "verdict",
]
