"""kwarp.run.stats: the paired bootstrap over prompts and seeds, its bounds and the three-way verdict."""

from __future__ import annotations

import numpy as np
import pytest

from kwarp.run.stats import (
    FAILS,
    HOLDS,
    UNRESOLVED,
    PromptPoint,
    bootstrap,
    paired_sd,
    prompts_needed,
    verdict,
)


@pytest.mark.parametrize(
    ("lower", "upper", "expected"),
    [
        (0.01, 0.05, HOLDS),  # the effect is positive
        (0.001, 0.015, HOLDS),  # positive, even if smaller than δ
        (-0.03, 0.01, FAILS),  # an effect of δ = 0.02 or more is excluded
        (-0.05, -0.01, FAILS),
        (-0.01, 0.03, UNRESOLVED),  # too wide to tell
        (None, None, UNRESOLVED),
    ],
)
def test_verdict(lower: float | None, upper: float | None, expected: str) -> None:
    assert verdict(lower, upper, 0.02) == expected


def _seed(rng: np.random.Generator, prompts: int, effect: float, prompt_sd: float, noise: float) -> dict[str, PromptPoint]:
    """Two points sharing a strong per-prompt effect (what paired evaluation exploits)."""
    base = rng.normal(0.0, prompt_sd, prompts)
    a = base + rng.normal(0.0, noise, prompts)
    b = base + effect + rng.normal(0.0, noise, prompts)
    kl = np.abs(rng.normal(1.0, 0.1, prompts))
    return {"a": PromptPoint(reward=a, kl=kl, gold=-a), "b": PromptPoint(reward=b, kl=kl, gold=-b)}


def diff(view):  # type: ignore[no-untyped-def]
    return view["b"].reward - view["a"].reward


def test_pairing_resolves_a_small_difference_under_large_prompt_effects() -> None:
    rng = np.random.default_rng(1)
    seeds = [_seed(rng, 400, effect=0.03, prompt_sd=1.0, noise=0.05) for _ in range(3)]
    est = bootstrap(seeds, diff, delta=0.02, replicates=500)
    assert est.value == pytest.approx(0.03, abs=0.01)
    assert est.verdict == HOLDS and 0 < est.lower < est.value < est.upper  # type: ignore[operator]
    # The per-prompt spread of each point (sd 1) is 20x the difference: unpaired, nothing would resolve.
    assert paired_sd(seeds[0]["b"], seeds[0]["a"]) < 0.1 < float(np.std(seeds[0]["a"].reward))
    assert len(est.per_seed) == 3 and all(lo < hi for lo, hi in est.per_seed_bounds)  # type: ignore[operator]


def test_no_effect_with_a_precise_evaluation_fails_and_a_noisy_one_is_unresolved() -> None:
    rng = np.random.default_rng(2)
    precise = [_seed(rng, 2000, effect=0.0, prompt_sd=1.0, noise=0.05) for _ in range(3)]
    assert bootstrap(precise, diff, delta=0.02, replicates=400).verdict == FAILS
    noisy = [_seed(rng, 50, effect=0.0, prompt_sd=1.0, noise=1.0) for _ in range(3)]
    assert bootstrap(noisy, diff, delta=0.02, replicates=400).verdict == UNRESOLVED


def test_seed_to_seed_spread_widens_the_interval() -> None:
    """Prompts alone would resolve each seed; seeds that disagree leave the mean unresolved."""
    rng = np.random.default_rng(3)
    seeds = [_seed(rng, 1000, effect=e, prompt_sd=0.5, noise=0.05) for e in (0.15, -0.12, 0.02)]
    est = bootstrap(seeds, diff, delta=0.02, replicates=600)
    widths = [hi - lo for lo, hi in est.per_seed_bounds]  # type: ignore[operator]
    assert max(widths) < 0.02  # each seed on its own is precise
    assert est.upper - est.lower > 0.1  # type: ignore[operator]
    assert est.verdict == UNRESOLVED


def test_undefined_statistic_is_skipped_and_all_undefined_is_unresolved() -> None:
    rng = np.random.default_rng(4)
    seeds = [_seed(rng, 100, effect=0.2, prompt_sd=0.1, noise=0.05) for _ in range(2)]
    est = bootstrap(seeds, lambda v: np.full_like(v["a"].reward, np.nan), delta=0.02, replicates=50)
    assert est.value is None and est.verdict == UNRESOLVED and est.defined == 0


def test_points_of_a_seed_must_share_prompts() -> None:
    p = PromptPoint(reward=np.zeros(3), kl=np.zeros(3))
    q = PromptPoint(reward=np.zeros(4), kl=np.zeros(4))
    with pytest.raises(ValueError, match="share their prompts"):
        bootstrap([{"p": p, "q": q}], diff, delta=0.02, replicates=10)


def test_prompt_point_from_json_keeps_the_first_prompts() -> None:
    raw = {"eta": 0.3, "reward": 9.0, "per_prompt": {"reward": [1, 2, 3, 4], "kl": [0, 1, 0, 1], "gold": [5, 6, 7, 8]}}
    p = PromptPoint.from_json(raw, prompts=2)
    assert p is not None and p.prompts == 2 and p.eta == 0.3
    mean = p.mean()
    assert (mean.reward, mean.kl, mean.gold) == (1.5, 0.5, 5.5)
    assert PromptPoint.from_json({"reward": 1.0}) is None  # an evaluation without per-prompt values


def test_prompts_needed() -> None:
    # ((1.645 + 0.842) * 0.5 / 0.02)^2 = 3865.9
    assert prompts_needed(0.5, 0.02) == 3866
    assert prompts_needed(0.25, 0.02) == 967
