"""The run report: headline numbers (hand-computed), and write_report / `kwarp report` on a fabricated store.

The store is fabricated with the documented file formats (docs/internals.md "Files the tasks write"),
so these tests do not depend on the trainer, merger or evaluator: two evaluated iterations of two
members and a third still training, written through FileStore.put_json / put_bytes.
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from kwarp.cli import main as kwarp_main
from kwarp.core.spec import WarpRun, parse
from kwarp.run import figures, report, rundata, timeline
from kwarp.run.figures import smooth
from kwarp.run.rundata import Point, hypervolume, reward_at_kl
from kwarp.store import FileStore, layout

RUN = "demo"
ETAS = [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]
LITI_ETA = 0.3
SFT_REWARD = -0.2
T0 = 1_700_000_000.0


# ------------------------------------------------------------------ the fabricated run


@dataclass
class Fabricated:
    store: FileStore
    spec: WarpRun
    fronts: dict[int, list[dict]]  # iteration -> eval.json front


def _front(i: int) -> list[dict]:
    """Iteration i's LiTI front: KL roughly linear in η, reward concave, higher for later iterations."""
    kl_max, gain = (8.0, 1.6) if i == 0 else (12.0, 2.4)
    return [
        {
            "eta": eta,
            "reward": SFT_REWARD + gain * (1 - math.exp(-3 * eta)) / (1 - math.exp(-3)),
            "reward_stderr": 0.04 + 0.02 * eta,
            "kl": 0.01 + kl_max * eta,
            "kl_stderr": 0.05 + 0.3 * eta,
            "length": 24.0,
        }
        for eta in ETAS
    ]


def _point(p: dict) -> dict:
    return {k: p[k] for k in ("reward", "reward_stderr", "kl", "kl_stderr")}


def _metrics(i: int, m: int, steps: int, start_kl: float, end_kl: float, end_reward: float, *,
             with_eval: bool = True, t0: float = T0) -> bytes:
    """metrics.jsonl of one member: noisy per-step rows, and held-out evaluations every 10 steps."""
    rng = random.Random(100 * i + m)
    start_reward = SFT_REWARD if i == 0 else SFT_REWARD + 0.7 * (i)
    lines, t = [], t0
    for s in range(1, steps + 1):
        frac = s / 60
        progress = 1 - math.exp(-3 * frac)
        seconds = 0.5 + rng.random() * 0.1
        t += seconds
        row = {
            "step": s,
            "reward": start_reward + (end_reward - start_reward) * progress + rng.gauss(0, 0.25),
            "reward_std": 0.8,
            "kl_anchor": 0.3 * frac + abs(rng.gauss(0, 0.05)),
            "kl_init": (end_kl - start_kl) * frac + abs(rng.gauss(0, 0.3)),
            "completion_tokens": 24 + rng.random() * 4,
            "entropy": 2.0 - frac,
            "loss": rng.gauss(0, 0.1),
            "grad_norm": 0.5 + rng.random(),
            "lr": 1e-5,
            "step_seconds": seconds,
            "tokens_per_second": 400 + rng.random() * 50,
            "time": t,
        }
        if with_eval and s % 10 == 0:
            row["eval"] = {
                "reward": start_reward + (end_reward - start_reward) * progress,
                "reward_stderr": 0.05,
                "kl": start_kl + (end_kl - start_kl) * frac,
                "kl_stderr": 0.1,
            }
        lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()


def _merge(i: int) -> dict:
    groups = ["model.embed_tokens", *[f"model.layers.{k}" for k in range(4)], "model.norm", "lm_head"]
    return {
        "iteration": i, "lambda": 0.5, "eta": LITI_ETA, "granularity": "layer",
        "groups": [{"name": g, "angle_deg": 86.0 + (k % 4) + i, "norms": [1.0 + k, 1.1 + k]} for k, g in enumerate(groups)],
        "bytes": 123456, "seconds": 1.5,
    }


def _spec(store_root: Path) -> WarpRun:
    return parse({
        "apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": RUN},
        "spec": {
            "policy": {"location": "/models/sft"}, "reward": {"callable": "kwarp.tasks.demo:reward"},
            "data": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl"},
            "warp": {"iterations": 3, "policies": 2, "steps": 60, "litiEta": LITI_ETA},
            "evaluation": {"etas": ETAS},
            "storage": {"url": str(store_root)},
        },
    })


def fabricate(root: Path, *, runner: bool = True) -> Fabricated:
    """Iterations 0 and 1 merged and evaluated; iteration 2 training (member 1's last line torn)."""
    store = FileStore(root)
    store.put_bytes(f"{layout.base(RUN)}/MANIFEST.json", b'{"files": [], "meta": {"created": 1}}')
    fronts = {0: _front(0), 1: _front(1)}
    inits = {0: _point(fronts[0][0]), 1: _point(fronts[0][2])}
    next_inits = {0: _point(fronts[0][2]), 1: {"reward": 1.35, "reward_stderr": 0.05, "kl": 4.6, "kl_stderr": 0.2}}
    for i in (0, 1):
        slerp = fronts[i][-1]
        for m in (0, 1):
            final = {"reward": slerp["reward"] - 0.15 - 0.05 * m, "kl": 0.85 * slerp["kl"] + 0.2 * m}
            store.put_bytes(layout.member_log(RUN, i, m),
                            _metrics(i, m, 60, inits[i]["kl"], final["kl"], final["reward"], t0=T0 + 1000 * i))
            store.put_bytes(f"{layout.member_final(RUN, i, m)}/MANIFEST.json", b"{}")
        store.put_json(layout.merge_report(RUN, i), _merge(i))
        members = [
            {"member": m, "reward": fronts[i][-1]["reward"] - 0.15 - 0.05 * m, "reward_stderr": 0.05,
             "kl": 0.85 * fronts[i][-1]["kl"] + 0.2 * m, "kl_stderr": 0.3}
            for m in (0, 1)
        ]
        store.put_json(layout.eval_json(RUN, i), {
            "iteration": i, "reference": "sft", "etas": ETAS, "front": fronts[i], "members": members,
            "init": inits[i], "next_init": next_inits[i], "prompts": 64, "samples": 64, "seconds": 7.0,
        })
    store.put_bytes(layout.member_log(RUN, 2, 0), _metrics(2, 0, 30, 4.6, 12.0, 2.6, t0=T0 + 2000))
    torn = _metrics(2, 1, 20, 4.6, 12.0, 2.6, t0=T0 + 2000) + b'{"step": 21, "rew'
    store.put_bytes(layout.member_log(RUN, 2, 1), torn)
    if runner:
        tasks = [{"task": "prepare", "start": T0 - 50, "end": T0 - 10, "attempt": 0, "status": "succeeded"}]
        for i in (0, 1):
            base = T0 + 1000 * i
            tasks += [
                {"task": f"i{i}-m0", "start": base - 5, "end": base + 40, "attempt": 0, "status": "succeeded"},
                {"task": f"i{i}-m1", "start": base - 5, "end": base + 10, "attempt": 0, "status": "failed"},
                {"task": f"i{i}-m1", "start": base + 10, "end": base + 52, "attempt": 1, "status": "succeeded"},
                {"task": f"i{i}-merge", "start": base + 60, "end": base + 62, "attempt": 0, "status": "succeeded"},
                {"task": f"i{i}-eval", "start": base + 63, "end": base + 71, "attempt": 0, "status": "succeeded"},
            ]
        tasks.append({"task": "i2-m0", "start": T0 + 1995, "end": None, "attempt": 0, "status": "running"})
        store.put_json(f"{RUN}/runner.json", {"tasks": tasks})
    return Fabricated(store, _spec(root), fronts)


@pytest.fixture
def fabricated(tmp_path: Path) -> Fabricated:
    return fabricate(tmp_path / "store")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------ headline numbers, by hand


def _pts(*kl_reward: tuple[float, float]) -> list[Point]:
    n = len(kl_reward)
    return [Point(reward=r, kl=k, eta=j / (n - 1)) for j, (k, r) in enumerate(kl_reward)]


def test_reward_at_kl_interpolates_linearly_in_kl_and_never_extrapolates() -> None:
    front = _pts((0.0, 0.0), (1.0, 2.0), (3.0, 3.0))
    assert reward_at_kl(front, 2.0) == pytest.approx(2.5)
    assert reward_at_kl(front, 0.5) == pytest.approx(1.0)
    assert reward_at_kl(front, 1.0) == pytest.approx(2.0)
    assert reward_at_kl(front, 0.0) == pytest.approx(0.0)
    assert reward_at_kl(front, 3.0) == pytest.approx(3.0)
    assert reward_at_kl(front, -0.1) is None
    assert reward_at_kl(front, 3.1) is None
    assert reward_at_kl([], 1.0) is None


def test_reward_at_kl_takes_the_best_crossing_of_a_non_monotone_front() -> None:
    # In η order the KL goes 0 -> 2 -> 1.5 -> 3: KL 1.75 is crossed by three segments.
    front = _pts((0.0, 0.0), (2.0, 1.0), (1.5, 2.0), (3.0, 3.0))
    # segments: 0 + 1·(1.75/2) = 0.875;  1 + 1·(0.25/0.5) = 1.5;  2 + 1·(0.25/1.5) = 2.1667
    assert reward_at_kl(front, 1.75) == pytest.approx(2 + 0.25 / 1.5)


def test_hypervolume_is_the_dominated_staircase_area() -> None:
    front = _pts((0.0, 0.0), (1.0, 2.0), (3.0, 3.0))
    # floor 0, ceiling 4: [0,1) adds 0, [1,3) adds 2·2 = 4, [3,4] adds 1·3 = 3
    assert hypervolume(front, 0.0, 4.0) == pytest.approx(7.0)
    # a dominated point (more KL, less reward than (1, 2)) changes nothing
    assert hypervolume([*front, Point(reward=1.5, kl=2.0)], 0.0, 4.0) == pytest.approx(7.0)
    # raising the floor to 1: [1,3) adds 2·1, [3,4] adds 1·2
    assert hypervolume(front, 1.0, 4.0) == pytest.approx(4.0)
    # points beyond the ceiling add nothing; the ceiling cuts the last step
    assert hypervolume([*front, Point(reward=9.0, kl=5.0)], 0.0, 4.0) == pytest.approx(7.0)
    assert hypervolume(front, 0.0, 2.0) == pytest.approx(2.0)
    assert hypervolume([], 0.0, 4.0) == 0.0
    # moving a point up-left enlarges the area
    assert hypervolume(_pts((0.0, 0.0), (0.5, 2.5), (3.0, 3.0)), 0.0, 4.0) > 7.0


def test_reference_kl_is_the_first_fronts_point_at_liti_eta() -> None:
    def run(front: list[Point], next_init: Point | None, eta: float = 0.3) -> rundata.RunData:
        it = rundata.IterationData(0, [], front=front, next_init=next_init)
        return rundata.RunData(RUN, [it, rundata.IterationData(1, [])], liti_eta=eta, document=None)

    grid = [Point(0.0, 0.0, eta=0.0), Point(1.0, 2.0, eta=0.3), Point(2.0, 5.0, eta=1.0)]
    assert rundata.reference_kl(run(grid, Point(9.0, 9.0))) == 2.0  # on the grid: the front's own point
    off_grid = [Point(0.0, 0.0, eta=0.0), Point(1.0, 4.0, eta=0.5), Point(2.0, 5.0, eta=1.0)]
    assert rundata.reference_kl(run(off_grid, Point(0.8, 2.5))) == 2.5  # iteration 0's next_init
    assert rundata.reference_kl(run(off_grid, None)) == pytest.approx(0.6 * 4.0)  # linear in η
    assert rundata.reference_kl(rundata.RunData(RUN, [rundata.IterationData(0, [])], 0.3, None)) is None


def test_smooth_keeps_length_constants_and_lines() -> None:
    assert np.allclose(smooth(np.full(50, 3.0), 7), 3.0)
    line = np.arange(40, dtype=float)
    out = smooth(line, 5)
    assert out.shape == line.shape
    assert np.allclose(out[2:-2], line[2:-2])  # a centred window leaves a line's interior unchanged
    noisy = np.random.default_rng(0).normal(size=400)
    assert smooth(noisy, 20).std() < 0.5 * noisy.std()


def test_parse_metrics_skips_a_torn_line_and_keeps_the_latest_record_of_a_step() -> None:
    rows = rundata.parse_metrics(b'{"step": 1, "reward": 0.1}\n{"step": 2, "reward": 0.2}\n'
                                b'{"step": 2, "reward": 0.25}\n{"step": 3, "rew')
    assert [(r["step"], r["reward"]) for r in rows] == [(1, 0.1), (2, 0.25)]


# ------------------------------------------------------------------ write_report on a fabricated store


def _brute_force_hv(front: list[dict], floor: float, ceiling: float, n: int = 400_001) -> float:
    """The same area by a Riemann sum over KL: independent of the staircase code."""
    ks = np.linspace(min(p["kl"] for p in front), ceiling, n)
    best = np.full_like(ks, floor)
    for p in front:
        best = np.where(ks >= p["kl"], np.maximum(best, p["reward"]), best)
    return float(np.sum(best[:-1] - floor) * (ks[1] - ks[0]))


def test_write_report_on_a_fabricated_run(fabricated: Fabricated, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = report.write_report(fabricated.store, RUN, fabricated.spec, out)
    assert path == out / "report.html"
    for name in ("report.html", "summary.json", *figures.FIGURES):
        assert (out / name).stat().st_size > 0, name
    w, h = _png_size((out / "pareto.png").read_bytes())
    assert (w, h) == (round(9.5 * figures.DPI), round(6.6 * figures.DPI))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"] == RUN
    assert summary["settings"]["warp"]["litiEta"] == LITI_ETA
    its = summary["iterations"]
    assert [it["iteration"] for it in its] == [0, 1, 2]
    assert [it["status"] for it in its] == ["complete", "complete", "training"]
    for i in (0, 1):
        assert [p["eta"] for p in its[i]["front"]] == ETAS
        assert its[i]["front"][3]["reward"] == pytest.approx(fabricated.fronts[i][3]["reward"])
        assert its[i]["slerp"]["kl"] == pytest.approx(fabricated.fronts[i][-1]["kl"])
        assert its[i]["angles_mean_deg"] == pytest.approx(np.mean([86 + k % 4 + i for k in range(7)]))
        assert [m["eval"]["reward"] is not None for m in its[i]["members"]] == [True, True]
    assert its[0]["next_init"]["kl"] == pytest.approx(fabricated.fronts[0][2]["kl"])
    assert its[1]["next_init"]["kl"] == pytest.approx(4.6)
    # the iteration still running: no front, no merge, but its members' progress
    assert its[2]["front"] == [] and its[2]["best_reward_at_kl"] is None and its[2]["hypervolume"] is None
    assert [m["train"]["steps"] for m in its[2]["members"]] == [30, 20]  # member 1's torn line dropped

    # headline: reference KL = iteration 0's point at η = litiEta; fronts interpolated at it
    f0, f1 = fabricated.fronts[0], fabricated.fronts[1]
    ref_kl = next(p["kl"] for p in f0 if p["eta"] == LITI_ETA)
    head = summary["headline"]
    assert head["reference_kl"] == pytest.approx(ref_kl)
    assert head["iteration"] == 1 and head["iterations_evaluated"] == 2 and head["iterations_total"] == 3
    expected_1 = np.interp(ref_kl, [p["kl"] for p in f1], [p["reward"] for p in f1])
    assert head["best_reward_at_kl"] == pytest.approx(expected_1)
    assert head["best_reward_at_kl_first"] == pytest.approx(f0[2]["reward"])
    assert head["best_reward_at_kl"] > head["best_reward_at_kl_first"]  # the later front is higher
    ceiling = max(p["kl"] for p in f0 + f1)
    assert head["reference_hv_kl"] == pytest.approx(ceiling)
    assert head["sft"]["reward"] == pytest.approx(SFT_REWARD)
    assert head["hypervolume"] == pytest.approx(_brute_force_hv(f1, SFT_REWARD, ceiling), rel=1e-3)
    assert head["hypervolume_first"] == pytest.approx(_brute_force_hv(f0, SFT_REWARD, ceiling), rel=1e-3)
    assert head["wall_seconds"] == pytest.approx(1000 + 71 + 50)  # prepare start .. iteration 1's eval end
    # runner.json timings win over the log: member 1 of iteration 0 took two attempts
    m1 = its[0]["members"][1]["train"]
    assert m1["attempts"] == 2 and m1["seconds"] == pytest.approx(42.0)

    text = (out / "report.html").read_text()
    assert text.count('src="data:image/png;base64,') == 4  # with the timeline
    assert "http://" not in text and "https://" not in text  # self-contained
    for needle in ("Iteration 0", "Iteration 2", "LiTI front", "SLERP of the members", "up and to the left is better",
                   "front not evaluated yet", "<pre>", "litiEta: 0.3"):
        assert needle in text, needle
    # the settings block is the spec, as YAML
    pre = text.split("<pre>", 1)[1].split("</pre>", 1)[0]
    import html as _html

    assert yaml.safe_load(_html.unescape(pre)) == fabricated.spec.to_document()

    # out_dir is not the store's report folder: the store gets a copy too
    stored = fabricated.store.list(layout.report_prefix(RUN))
    assert sorted(k.rsplit("/", 1)[1] for k in stored) == sorted(["report.html", "summary.json", "timeline.png",
                                                                  *figures.FIGURES])  # fmt: skip


def test_the_timeline_of_an_embedded_run_shows_progress_attempts_and_no_admission(fabricated: Fabricated,
                                                                                  tmp_path: Path) -> None:
    path = report.write_report(fabricated.store, RUN, fabricated.spec, tmp_path / "out")
    tl = json.loads((path.parent / "summary.json").read_text())["timeline"]
    assert tl["executor"] == "local" and tl["admission"] is None  # kwarp run: no queue, and no fake zero
    assert "has no admission" in tl["admission_note"]
    assert [(a["task"], a["attempt"], a["status"]) for a in tl["attempts"][:4]] == [
        ("prepare", 0, "succeeded"), ("i0-m0", 0, "succeeded"), ("i0-m1", 0, "failed"), ("i0-m1", 1, "succeeded")]
    assert all(a["admission_wait_seconds"] is None for a in tl["attempts"])
    # Progress by wall time: iterations 0 and 1 done (4 x 60 steps), iteration 2 at 30 and 20 of 60 (torn line
    # dropped), against 3 x 2 x 60 steps; never decreasing, thinned to at most MAX_POINTS (+ the last).
    progress = tl["progress"]
    assert progress[-1][1] == pytest.approx((4 * 60 + 30 + 20) / 360)
    assert all(a[1] <= b[1] and a[0] <= b[0] for a, b in zip(progress, progress[1:], strict=False))
    assert len(progress) <= timeline.MAX_POINTS + 1
    text = path.read_text()
    assert "<h2>Timeline</h2>" in text and "has no admission" in text
    assert (path.parent / "timeline.png").stat().st_size > 10_000


def test_the_timeline_of_an_operator_run_shows_each_jobs_admission_wait(tmp_path: Path) -> None:
    """jobs.json as the operator writes it (operator/joblog.py): the waits, their queue, median and longest."""
    fab = fabricate(tmp_path / "store", runner=False)
    fab.store.put_json(f"{RUN}/OWNER.json", {"namespace": "team-a", "name": RUN, "uid": "u-1",
                                              "specDigest": "sha256:x", "executor": "operator"})  # fmt: skip
    jobs = [{"task": "prepare", "attempt": 0, "job": "demo-prepare", "uid": "a", "queue": "gpus",
             "created": T0 - 100, "start": T0 - 40, "end": T0 - 10, "status": "succeeded",
             "admission_wait_seconds": 60.0}]  # fmt: skip
    jobs += [{"task": f"i0-m{m}", "attempt": 0, "job": f"demo-i0-m{m}", "uid": f"m{m}", "queue": "gpus",
              "created": T0 - 9, "start": T0 - 9 + wait, "end": T0 + 60, "status": "succeeded",
              "admission_wait_seconds": wait} for m, wait in ((0, 4.0), (1, 9.0))]  # fmt: skip
    fab.store.put_json(layout.jobs_json(RUN), {"executor": "operator", "tasks": jobs})
    path = report.write_report(fab.store, RUN, fab.spec, tmp_path / "out")
    summary = json.loads((path.parent / "summary.json").read_text())
    tl = summary["timeline"]
    assert tl["executor"] == "operator"
    assert tl["admission"] == {"jobs": 3, "queues": ["gpus"], "median_seconds": 9.0, "max_seconds": 60.0}
    assert [a["admission_wait_seconds"] for a in tl["attempts"]] == [60.0, 4.0, 9.0]
    assert summary["headline"]["wall_seconds"] == pytest.approx(60 + 40)  # from jobs.json: prepare start .. i0 end
    text = path.read_text()
    assert "3 Job(s) admitted by Kueue from gpus: waited median 9 s, longest 60 s" in text

    # The same run without a queue: admission does not apply, and the report says so.
    fab.store.put_json(layout.jobs_json(RUN), {"executor": "operator", "tasks": [
        {**j, "queue": None, "admission_wait_seconds": None} for j in jobs]})  # fmt: skip
    path = report.write_report(fab.store, RUN, fab.spec, tmp_path / "out2")
    tl = json.loads((path.parent / "summary.json").read_text())["timeline"]
    assert tl["admission"] is None and "no spec.queueName" in tl["admission_note"]


def test_default_out_dir_is_the_file_stores_report_folder(fabricated: Fabricated) -> None:
    path = report.write_report(fabricated.store, RUN, fabricated.spec)
    assert path == fabricated.store.root / RUN / "report" / "report.html"
    assert fabricated.store.exists(f"{layout.report_prefix(RUN)}angles.png")


def test_missing_pieces_show_what_exists(tmp_path: Path) -> None:
    fab = fabricate(tmp_path / "store", runner=False)
    # iteration 1 merged but not evaluated yet; iteration 0's merge report lost
    fab.store.delete_prefix(layout.eval_json(RUN, 1))
    fab.store.delete_prefix(layout.merge_report(RUN, 0))
    path = report.write_report(fab.store, RUN, None, tmp_path / "out")  # no spec: all from the store
    summary = json.loads((path.parent / "summary.json").read_text())
    its = summary["iterations"]
    assert [it["status"] for it in its] == ["complete", "evaluating", "training"]
    assert its[0]["angles_mean_deg"] is None and its[1]["angles_mean_deg"] is not None
    assert its[1]["front"] == [] and its[1]["members"][0]["eval"] is None
    head = summary["headline"]
    assert head["iteration"] == 0 and head["liti_eta"] == LITI_ETA  # η read from merge.json
    assert head["best_reward_at_kl"] == head["best_reward_at_kl_first"]
    assert head["wall_seconds"] is None  # no runner.json
    # training time falls back to the log: first step's start to last step's end
    rows = rundata.parse_metrics(fab.store.get_bytes(layout.member_log(RUN, 0, 0)))
    expected = rows[-1]["time"] - rows[0]["time"] + rows[0]["step_seconds"]
    assert its[0]["members"][0]["train"]["seconds"] == pytest.approx(expected)
    text = path.read_text()
    assert "front not evaluated yet" in text and "was not given" in text


def test_an_empty_run_still_gets_a_report(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_bytes(f"{layout.base(RUN)}/MANIFEST.json", b"{}")
    path = report.write_report(store, RUN, _spec(store.root), tmp_path / "out")
    summary = json.loads((path.parent / "summary.json").read_text())
    assert [it["status"] for it in summary["iterations"]] == ["pending"] * 3
    assert summary["headline"]["reference_kl"] is None and summary["headline"]["hypervolume"] is None
    for name in figures.FIGURES:
        _png_size((path.parent / name).read_bytes())
    assert not (path.parent / "timeline.png").exists()  # nothing timed yet: no empty figure
    assert "not known" in summary["timeline"]["admission_note"]


def test_trajectory_falls_back_to_training_batches_without_eval_entries(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_bytes(layout.member_log(RUN, 0, 0), _metrics(0, 0, 40, 0.0, 6.0, 1.2, with_eval=False))
    data = rundata.load_run(store, RUN)
    assert data.iterations[0].members[0].eval_trajectory() == []
    with_batches = figures.pareto_figure(data)
    store.delete_prefix(layout.member_log(RUN, 0, 0))
    store.put_bytes(layout.member_log(RUN, 0, 0), b'{"step": 1}\n')
    assert figures.pareto_figure(rundata.load_run(store, RUN)) != with_batches


# ------------------------------------------------------------------ the CLI


def test_cli_report_by_name_with_store(fabricated: Fabricated, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-out"
    assert kwarp_main(["report", RUN, "--store", fabricated.store.url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and "iterations evaluated: 2/3" in printed
    assert "admission: An embedded run (kwarp run) has no admission" in printed  # the fabricated run's runner.json
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["iterations"]) == 3 and summary["settings"] == {}


def test_cli_report_from_the_warprun_file(fabricated: Fabricated, tmp_path: Path) -> None:
    doc = fabricated.spec.to_document()
    spec_file = tmp_path / "warprun.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    assert kwarp_main(["report", str(spec_file)]) == 0
    summary = json.loads((fabricated.store.root / RUN / "report" / "summary.json").read_text())
    assert summary["settings"]["warp"]["iterations"] == 3


def test_cli_report_says_what_to_fix(fabricated: Fabricated, capsys: pytest.CaptureFixture) -> None:
    assert kwarp_main(["report", RUN]) == 2
    assert "--store" in capsys.readouterr().err
    assert kwarp_main(["report", "no-such-run", "--store", fabricated.store.url]) == 2
    assert "nothing stored for run 'no-such-run'" in capsys.readouterr().err
    assert kwarp_main(["report", "missing.yaml"]) == 2
