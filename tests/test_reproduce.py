"""`kwarp reproduce`: the run documents and job graph (fast), and (slow) a quick run on the tiny task whose
claims.json is recomputed from the stored evaluation files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kwarp.core.ownership import store_key
from kwarp.core.spec import parse
from kwarp.run import claims as C
from kwarp.run.reproduce import (
    CPU,
    FRONT_ETAS,
    GPU,
    QUICK,
    Reproduction,
    compute_claims,
    documents,
    folder,
    load_inputs,
    scale_from,
)
from kwarp.tasks.document import warprun


def base_doc(tmp_path: Path) -> dict:
    return warprun(policy=str(tmp_path / "policy"), reward=str(tmp_path / "reward"), train=str(tmp_path / "t.jsonl"),
                   eval=str(tmp_path / "e.jsonl"), storage=str(tmp_path / "runs"))


def test_documents_of_a_seed(tmp_path: Path) -> None:
    docs = documents(base_doc(tmp_path), CPU, 1, str(tmp_path / "store"))
    assert sorted(docs) == sorted(["warp-s1", "warp4-s1", *(f"sft-{C.beta_label(b)}-s1" for b in C.SFT_BETAS)])
    runs = {name: parse(doc).spec for name, doc in docs.items()}  # every document is a valid WarpRun
    # Each names its identity, so its task commands and its `kwarp run` share the run's own folder.
    assert {store_key(parse(doc)) for doc in docs.values()} == {folder(name) for name in docs}
    assert folder("warp-s1") == "reproduce/warp-s1/reproduction"
    warp, large = runs["warp-s1"], runs["warp4-s1"]
    assert (warp.warp.iterations, warp.warp.policies, warp.warp.anchor) == (CPU.iterations, 2, "ema")
    assert warp.evaluation.etas == list(FRONT_ETAS) and len(FRONT_ETAS) == 11
    assert (large.warp.iterations, large.warp.policies) == (1, 4)
    for spec in runs.values():
        # One seed's runs share prompts, samples and the sampling seed: every comparison is paired.
        assert spec.training.seed == 100_000 and spec.warp.steps == CPU.steps
        assert (spec.evaluation.prompts, spec.evaluation.samples_per_prompt) == (CPU.eval_prompts, CPU.eval_samples)
        assert spec.evaluation.gold_reward is not None and spec.evaluation.gold_reward.callable.endswith(":true_score")
        # The task's own settings (batch, learning rate, μ) are kept.
        assert spec.training.batch_size == base_doc(tmp_path)["spec"]["training"]["batchSize"]
        assert spec.warp.ema_rate == base_doc(tmp_path)["spec"]["warp"]["emaRate"]
    assert {runs[f"sft-{C.beta_label(b)}-s1"].warp.beta for b in C.SFT_BETAS} == set(C.SFT_BETAS)
    assert all(runs[f"sft-{C.beta_label(b)}-s1"].warp.anchor == "sft" for b in C.SFT_BETAS)


def test_gpu_scale_keeps_the_papers_ema_rate() -> None:
    assert GPU.overrides["warp"]["emaRate"] == 0.01 and GPU.steps * 0.01 >= 10  # μT ≥ 10
    assert GPU.task_size == "medium" and GPU.device == "cuda"


def test_job_graph(tmp_path: Path) -> None:
    from rich.console import Console

    repro = Reproduction(tmp_path / "out", QUICK, Console(quiet=True))
    jobs = {j.name: j for j in repro.jobs(base_doc(tmp_path))}
    assert jobs["train warp-s0 m0"].args[:5] == ["train", "--iteration", "0", "--member", "0"]
    assert "--eval-every" in jobs["train warp-s0 m0"].args and "--eval-every" in jobs["train sft-b300-s1"].args
    assert "--eval-every" not in jobs["train warp4-s0 m2"].args  # its trajectories are not used
    # The M = 4 run waits for the M = 2 run's members (it takes them) and trains only members 2-3.
    assert set(jobs["run warp4-s0"].after) == {"train warp-s0 m0", "train warp-s0 m1", "train warp4-s0 m2",
                                               "train warp4-s0 m3"}
    assert "train warp4-s0 m0" not in jobs
    names = set(jobs)
    assert all(a in names for j in jobs.values() for a in j.after)  # no dangling dependency
    assert not any(j.done() for j in jobs.values() if j.done is not None)  # nothing exists yet


def test_scale_overrides() -> None:
    ns = argparse.Namespace(scale="gpu", quick=False, seeds=1, steps=2, parallel=None, device="cpu", task_size="tiny")
    s = scale_from(ns)
    assert (s.name, s.seeds, s.steps, s.device, s.task_size) == ("gpu", 1, 2, "cpu", "tiny")


@pytest.mark.slow
def test_quick_reproduction_is_consistent(tmp_path: Path) -> None:
    """The whole path at a tiny size (the GPU scale's code path too: --device cpu --task-size tiny)."""
    out = tmp_path / "repro"
    env = {**os.environ, "KWARP_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-P", "-m", "kwarp", "reproduce", "--scale", "quick", "--task-size", "tiny",
                    "--steps", "6", "--out", str(out)], check=True, env=env, timeout=3600)
    stored = json.loads((out / "claims.json").read_text())
    assert [f["id"] for f in stored["findings"]] == ["anchor", "merge", "liti", "iterate"]
    for f in stored["findings"]:
        assert f["verdict"] in ("holds", "fails", "unresolved") and f["criteria"]
        for c in f["criteria"]:
            assert len(c["per_seed"]) == QUICK.seeds and "lower_95" in c
    # Recompute every claim from the stored evaluation files: the same numbers and verdicts.
    scale = scale_from(argparse.Namespace(scale="quick", quick=False, seeds=None, steps=6, parallel=None, device=None,
                                          task_size="tiny"))
    again = compute_claims(load_inputs(out, scale), scale)
    assert json.loads(json.dumps(again["findings"])) == stored["findings"]
    # And one by hand, straight from eval.json: SLERP minus the mean member (M = 2), seed 0.
    ev = json.loads((out / "store" / folder("warp-s0") / "iter-0" / "eval.json").read_text())
    slerp = max(ev["front"], key=lambda p: p["eta"])["reward"]
    mean_member = sum(m["reward"] for m in ev["members"]) / 2
    crit = next(c for f in stored["findings"] for c in f["criteria"] if c["id"] == "2a M=2")
    assert crit["per_seed"][0] == pytest.approx(slerp - mean_member, abs=1e-4)
    assert "gold" in crit and (out / "figure.png").stat().st_size > 20_000 and (out / "README.md").is_file()


@pytest.mark.slow
def test_gpu_scale_path_on_a_cpu_at_the_tiny_size(tmp_path: Path) -> None:
    """`--scale gpu` (its overrides: μ = 0.01, batch 32, trajectories every 200 steps, parallel members)
    run end to end on a CPU with the tiny task and 2 steps: the path works where no GPU is at hand."""
    out = tmp_path / "repro"
    env = {**os.environ, "KWARP_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-P", "-m", "kwarp", "reproduce", "--scale", "gpu", "--device", "cpu",
                    "--task-size", "tiny", "--steps", "2", "--seeds", "1", "--parallel", "2", "--out", str(out)],
                   check=True, env=env, timeout=3600)
    stored = json.loads((out / "claims.json").read_text())
    assert stored["scale"]["name"] == "gpu" and stored["scale"]["device"] == "cpu"
    doc = json.loads((out / "docs" / "warp-s0.json").read_text())
    assert doc["spec"]["warp"]["emaRate"] == 0.01 and doc["spec"]["training"]["batchSize"] == 32
    assert [f["id"] for f in stored["findings"]] == ["anchor", "merge", "liti", "iterate"]
