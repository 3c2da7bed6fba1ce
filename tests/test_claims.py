"""kwarp.run.claims: the pre-registered criteria against hand-computed values, and the whole
evaluation on synthetic seeds whose findings are built to hold or to fail."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kwarp.run import claims as C
from kwarp.run.rundata import Point, reward_at_kl
from kwarp.run.stats import FAILS, HOLDS, PromptPoint, Vec


def P(kl: float, r: float) -> Vec:
    """A point with one resample (R = 1)."""
    return Vec(reward=np.array([r], dtype=float), kl=np.array([kl], dtype=float))


def line(*points: Vec) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([p.kl for p in points]), np.stack([p.reward for p in points])


def one(x: np.ndarray) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def test_curve_helpers() -> None:
    c = line(P(0, 0), P(1, 1), P(2, 1.5))
    assert one(C.at(c, np.array([[0.5]]))) == pytest.approx(0.5) and np.isnan(one(C.at(c, np.array([[3.0]]))))
    assert C.grid(np.array([1.0]), 4)[:, 0].tolist() == [0.25, 0.5, 0.75, 1.0] and np.isnan(C.grid(np.array([0.0]))).all()
    flat = line(P(0, 0), P(2, 0))
    expected = np.mean([0.2, 0.4, 0.6, 0.8, 1, 1.1, 1.2, 1.3, 1.4, 1.5])
    assert one(C.mean_gap(c, flat, np.array([2.0]))) == pytest.approx(expected)
    # the mean height of y = x on [0, 1] is 1/2; of y = 1 above a floor of 0.5 it is 0.5
    assert one(C.mean_height(line(P(0, 0), P(1, 1)), np.array([0.0]), np.array([1.0]))) == pytest.approx(0.5)
    assert one(C.mean_height(line(P(0, 1), P(1, 1)), np.array([0.5]), np.array([1.0]))) == pytest.approx(0.5)
    assert np.isnan(one(C.mean_height(line(P(0.5, 1), P(1, 1)), np.array([0.0]), np.array([1.0]))))  # not from 0


def test_at_matches_rundata_reward_at_kl_on_noisy_curves() -> None:
    """The vectorised interpolation is rundata.reward_at_kl, resample by resample."""
    rng = np.random.default_rng(0)
    kl = np.cumsum(rng.uniform(-0.2, 1.0, size=(8, 50)), axis=0)  # non-monotone in places
    r = rng.normal(size=(8, 50))
    ks = rng.uniform(-0.5, 6.0, size=(5, 50))
    got = C.at((kl, r), ks)
    for j in range(50):
        pts = [Point(reward=float(r[i, j]), kl=float(kl[i, j])) for i in range(8)]
        for g in range(5):
            want = reward_at_kl(pts, float(ks[g, j]))
            assert (np.isnan(got[g, j]) and want is None) or got[g, j] == pytest.approx(want)


def test_first_kl_reaching() -> None:
    c = line(P(0, 0), P(2, 1), P(4, 3))
    assert one(C.first_kl_reaching(c, np.array([2.0]))) == pytest.approx(3.0)
    assert one(C.first_kl_reaching(c, np.array([0.0]))) == 0.0
    assert one(C.first_kl_reaching(c, np.array([5.0]))) == 4.0  # never reached: its largest KL (a lower bound)


def view(**curves: list[Vec]) -> dict[str, Vec]:
    """Named points: curve 'x' as x/0, x/1, ... (in order)."""
    return {f"{name}/{j}": p for name, pts in curves.items() for j, p in enumerate(pts)}


def names(v: dict[str, Vec], prefix: str) -> list[str]:
    return sorted((n for n in v if n.startswith(prefix + "/")), key=lambda n: int(n.rsplit("/", 1)[1]))


def test_anchor_envelope_gap_compares_with_the_best_sft_run_at_each_kl() -> None:
    v = view(
        ema=[P(0, 0), P(2, 2)],  # reward = KL
        low=[P(0, 0), P(4, 2)],  # reward = KL / 2: reaches further
        high=[P(0, 0), P(1, 1.5)],  # better early, stops at KL 1
    )
    # K = min(2, max(4, 1)) = 2; grid 0.2..2. Envelope: max(k/2, 1.5k for k <= 1).
    ks = [0.2 * j for j in range(1, 11)]
    env = [max(k / 2, 1.5 * k if k <= 1 + 1e-12 else -np.inf) for k in ks]
    expected = float(np.mean([k - e for k, e in zip(ks, env, strict=True)]))
    got = C.anchor_envelope_gap(v, [names(v, "ema")], [names(v, "low"), names(v, "high")])
    assert one(got) == pytest.approx(expected)


def test_final_gaps_of_the_two_sided_form() -> None:
    v = view(ema=[P(0, 0), P(2, 2)], strong=[P(0, 0), P(1, 1.2)], weak=[P(0, 0), P(3, 1), P(6, 2.5)])
    assert one(C.final_reward_gap(v, [names(v, "ema")], names(v, "strong"))) == pytest.approx(0.8)
    # the weak run first reaches reward 2 at KL 3 + 3 * (1 / 1.5) = 5; the EMA run is there at KL 2
    assert one(C.kl_to_reach_gap(v, [names(v, "ema")], names(v, "weak"))) == pytest.approx(3.0)


def test_liti_and_front_area() -> None:
    v = view(front=[P(0, 0), P(2, 2)], ema=[P(0, 0), P(1, 0.5), P(3, 9)])
    # only the point at KL 1 lies inside the front's range: front(1) - 0.5
    assert one(C.liti_above_trajectories(v, names(v, "front"), [names(v, "ema")])) == pytest.approx(0.5)
    v |= {"sft": P(0, 0)} | view(later=[P(0, 0), P(1, 2), P(2, 2)])
    # up to K = 2: later's mean height is (1 + 2) / 2 = 1.5, the front's 1
    assert one(C.front_area_gap(v, names(v, "later"), names(v, "front"))) == pytest.approx(0.5, abs=1e-3)
    assert one(C.front_level_gap(v, names(v, "later"), names(v, "front"), 0.5)) == pytest.approx(1.0)


# ------------------------------------------------------------------ the whole evaluation on synthetic seeds


def synthetic_seed(rng: np.random.Generator, *, slerp_gain: float, iterate_gain: float, prompts: int = 300) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Points whose means follow simple curves; per-prompt noise shared across points (paired)."""
    base = rng.normal(0, 1.0, prompts)

    def point(kl: float, reward: float, eta: float | None = None) -> PromptPoint:
        r = base + reward + rng.normal(0, 0.05, prompts)
        k = kl + rng.normal(0, 0.05, prompts)
        return PromptPoint(reward=r, kl=k, gold=r - 0.1 * k, eta=eta)

    etas = [round(0.1 * j, 1) for j in range(11)]
    member_etas = [0.5]
    large_etas = [0.0, 0.5, 1.0]
    front: dict[str, PromptPoint] = {}
    for i in range(3):
        for e in etas:
            kl = 4 * e
            front[f"front{i}/eta={C.eta_key(e)}"] = point(kl, np.sqrt(kl) + i * iterate_gain * e + slerp_gain * e, e)
    front["sft"] = front["front0/eta=0"]
    for key, count in (("m2", 2), ("m4", 4)):
        for m in range(count):
            front[f"{key}/member{m}"] = point(3.8, np.sqrt(3.8))
            if key == "m2" or m >= 2:
                front[f"{key}/member{m}/eta=0.5"] = point(1.9, np.sqrt(1.9))
        front[f"{key}/linear"] = point(3.0, np.sqrt(3.8) - 0.1)
    for e in large_etas[1:]:
        front[f"m4/eta={C.eta_key(e)}"] = point(4 * e, np.sqrt(4 * e) + 1.5 * slerp_gain * e, e)
    traj: dict[str, PromptPoint] = {"sft": front["sft"]}
    for e in etas:
        traj[f"front0/eta={C.eta_key(e)}"] = front[f"front0/eta={C.eta_key(e)}"]
    steps = [20, 40, 60, 80, 100]
    for m in range(2):
        for t in steps:
            kl = 3.8 * t / 100
            traj[f"ema{m}/step={t}"] = point(kl, np.sqrt(kl) - 0.2)
    for b in C.SFT_BETAS:
        for t in steps:
            kl = (3.8 + 4 * (0.3 - b)) * t / 100  # small β drifts further
            traj[f"sft-{C.beta_label(b)}/step={t}"] = point(kl, np.sqrt(kl) - 0.4)
    lay = {"iterations": 3, "etas": etas, "member_etas": member_etas, "large_etas": large_etas,
           "steps": {**{f"ema{m}": steps for m in range(2)}, **{f"sft-{C.beta_label(b)}": steps for b in C.SFT_BETAS}}}
    return front, traj, lay


def test_findings_hold_when_built_to_hold() -> None:
    rng = np.random.default_rng(5)
    seeds = [synthetic_seed(rng, slerp_gain=0.3, iterate_gain=0.3) for _ in range(3)]
    findings = C.evaluate_claims([s[0] for s in seeds], [s[1] for s in seeds], seeds[0][2], replicates=200)
    by_id = {f["id"]: f for f in findings}
    assert [f["id"] for f in findings] == ["anchor", "merge", "liti", "iterate"]
    assert by_id["anchor"]["verdict"] == HOLDS  # EMA is 0.2 above every SFT run at equal KL
    assert by_id["merge"]["verdict"] == HOLDS
    assert by_id["liti"]["verdict"] == HOLDS
    assert by_id["iterate"]["verdict"] == HOLDS
    c4 = by_id["iterate"]["criteria"][0]
    assert c4["id"] == "4a" and len(c4["per_seed"]) == 3 and c4["lower_95"] > 0 and "gold" in c4
    one_c = {c["id"]: c for c in by_id["anchor"]["criteria"]}
    assert one_c["1c beta=0"]["delta"] == C.DELTA_KL and "gold" not in one_c["1c beta=0"]


def test_findings_fail_when_built_to_fail() -> None:
    rng = np.random.default_rng(6)
    seeds = [synthetic_seed(rng, slerp_gain=-0.3, iterate_gain=0.0) for _ in range(3)]
    findings = {f["id"]: f for f in C.evaluate_claims([s[0] for s in seeds], [s[1] for s in seeds], seeds[0][2],
                                                      replicates=200)}
    assert findings["merge"]["verdict"] == FAILS
    assert findings["iterate"]["verdict"] == FAILS  # identical fronts: an effect of δ is excluded


def test_combined_verdict() -> None:
    assert C.combined([HOLDS, HOLDS]) == HOLDS
    assert C.combined([HOLDS, FAILS]) == FAILS
    assert C.combined([HOLDS, "unresolved"]) == "unresolved"
