"""`kwarp reproduce`: the claim functions against hand-computed values, and (slow) a --quick run
whose claims.json is recomputed from the stored evaluation files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kwarp.run.reproduce import (
    QUICK,
    anchor_gap,
    best_within,
    claims,
    iteration_gain,
    liti_gap,
    load_inputs,
    merge_gap,
    summarize,
    trajectory,
)
from kwarp.run.rundata import Point


def P(kl: float, r: float) -> Point:
    return Point(reward=r, kl=kl)


def test_trajectory_reads_eval_entries() -> None:
    rows = [{"step": 1}, {"step": 2, "eval": {"reward": 0.5, "kl_sft": 0.1}}, {"step": 3, "eval": {"reward": 0.7, "kl": 0.3}}]
    assert trajectory(rows) == [P(0.1, 0.5), P(0.3, 0.7)]


def test_best_within_a_kl_budget() -> None:
    pts = [P(0.1, 1.0), P(0.5, 2.0), P(1.0, 3.0)]
    assert best_within(pts, 0.6) == 2.0 and best_within(pts, 0.05) is None and best_within(pts, 5) == 3.0


def test_anchor_gap() -> None:
    sft = [P(0.2, 0.5), P(0.8, 1.0)]  # budget K = 0.8, its best within K = 1.0
    ema = [[P(0.3, 1.2), P(0.9, 2.0)], [P(0.4, 1.4)]]  # bests within 0.8: 1.2 and 1.4
    got = anchor_gap(ema, sft)
    assert got["kl_budget"] == 0.8 and got["ema_best"] == [1.2, 1.4]
    assert got["value"] == pytest.approx(1.3 - 1.0)


def test_merge_gap() -> None:
    got = merge_gap([P(1, 1.0), P(1, 1.5)], slerp=P(1.4, 1.8), linear=P(1.0, 1.6))
    assert got["slerp_minus_best_member"] == pytest.approx(0.3)
    assert got["slerp_minus_linear"] == pytest.approx(0.2)
    assert got["value"] == pytest.approx(0.2)
    assert got["slerp_kl_minus_linear_kl"] == pytest.approx(0.4)


def test_liti_gap_uses_points_inside_the_front() -> None:
    front = [P(0.0, 0.0), P(1.0, 2.0)]  # reward 2·KL on [0, 1]
    got = liti_gap(front, [[P(0.5, 0.5), P(2.0, 9.0)], [P(0.25, 1.0)]])
    assert got["points"] == 2  # the point at KL 2 lies outside the front's range
    assert got["value"] == pytest.approx(((1.0 - 0.5) + (0.5 - 1.0)) / 2)


def test_iteration_gain() -> None:
    first = [P(0.0, 0.0), P(1.0, 1.0)]
    last = [P(0.0, 0.0), P(0.5, 1.0), P(1.0, 2.0)]
    got = iteration_gain([first, last])
    assert got["kl_ceiling"] == 1.0 and got["sft_reward"] == 0.0
    assert got["hypervolume"][1] > got["hypervolume"][0]
    assert got["value"] == pytest.approx(got["hypervolume"][1] - got["hypervolume"][0])


def test_summarize() -> None:
    s = summarize([1.0, 3.0, None])
    assert s["mean"] == 2.0 and s["min"] == 1.0 and s["per_seed"] == [1.0, 3.0, None]
    assert summarize([None])["mean"] is None


@pytest.mark.slow
def test_quick_reproduction_is_consistent(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    env = {**os.environ, "KWARP_CACHE": os.environ.get("KWARP_CACHE", str(Path.home() / ".cache" / "kwarp"))}
    subprocess.run([sys.executable, "-P", "-m", "kwarp", "reproduce", "--quick", "--out", str(out)], check=True, env=env,
                   timeout=3600)
    stored = json.loads((out / "claims.json").read_text())
    assert [f["id"] for f in stored["findings"]] == ["anchor", "merge", "liti", "iterate"]
    for f in stored["findings"]:
        assert isinstance(f["holds"], bool) and f["criterion"] and f["statement"]
    # Recompute every claim from the stored evaluation files: the same numbers and verdicts.
    again = json.loads(json.dumps(claims(load_inputs(out, QUICK), QUICK), default=lambda o: o.__dict__))
    assert again["findings"] == stored["findings"]
    # And one by hand, straight from eval.json: finding 2 for M = 2, seed 0.
    ev = json.loads((out / "store" / "warp-s0" / "iter-0" / "eval.json").read_text())
    slerp = max(ev["front"], key=lambda p: p["eta"])["reward"]
    linear = json.loads((out / "linear" / "s0-m2.json").read_text())["reward"]
    best = max(m["reward"] for m in ev["members"])
    merge = next(f for f in stored["findings"] if f["id"] == "merge")
    assert merge["measured"]["M=2"][0]["value"] == pytest.approx(min(slerp - best, slerp - linear))
    assert (out / "figure.png").stat().st_size > 20_000 and (out / "README.md").is_file()
