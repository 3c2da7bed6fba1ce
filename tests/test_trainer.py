"""The trainer end to end on a tiny random GPT-2 with a callable reward, in a file:// store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kwarp.cli import main as kwarp_main
from kwarp.core.checkpoints import MANIFEST, verify
from kwarp.core.spec import GoldRewardSpec, WarpRun, parse
from kwarp.policy import load_causal_lm
from kwarp.store import layout, open_store
from kwarp.trainer.state import STATE_JSON
from kwarp.trainer.train import PROGRESS_PREFIX, train
from tests.models import load_state, tiny_gpt2
from tests.prom import Pushgateway

REWARD_MODULE = '''
def vowels(prompts, completions):
    """Fraction of vowels in the completion: about 5% for a random character model."""
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


CALLS = [0]  # calls of nan_on_calls_2_and_3 (a test resets it)


def nan_on_calls_2_and_3(prompts, completions):
    """vowels, except nan for one completion on the 2nd and 3rd calls (steps 2 and 3 of a run)."""
    CALLS[0] += 1
    values = vowels(prompts, completions)
    if CALLS[0] in (2, 3):
        values[1] = float("nan")
    return values


def always_nan(prompts, completions):
    return [float("nan")] * len(completions)
'''
PROMPTS = ["hello", "the cat", "a b c", "xyz", "once upon", "data", "go", "ok", "why not", "sun"]
LOG_FIELDS = {
    "step", "reward", "reward_std", "kl_anchor", "kl_init", "completion_tokens", "entropy", "loss",
    "grad_norm", "lr", "step_seconds", "tokens_per_second", "time", "timing",
}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def make_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., WarpRun]:
    """make_run(store_name, **overrides) -> a WarpRun over a tiny GPT-2 base in tmp_path/<store_name>."""
    (tmp_path / "kwarp_train_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    base = tiny_gpt2(tmp_path / "sft")

    def make(store: str = "store", *, warp: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
             write: bool = False) -> WarpRun:
        root = tmp_path / store
        if not (root / "r" / "base").exists():
            shutil.copytree(base, root / "r" / "base")
        doc = {
            "apiVersion": "kwarp.dev/v1alpha1",
            "kind": "WarpRun",
            "metadata": {"name": "r"},
            "spec": {
                "policy": {"location": str(base), "dtype": "float32"},
                "reward": {"callable": "kwarp_train_rewards:vowels"},
                "data": {"train": str(data), "eval": str(data)},
                "warp": {"iterations": 1, "policies": 1, "steps": 6, "beta": 0.05, "emaRate": 0.1, **(warp or {})},
                "training": {
                    "batchSize": 4, "samplesPerPrompt": 2, "microBatchSize": 2, "learningRate": 1e-2,
                    "warmupSteps": 2, "maxNewTokens": 8, "checkpointInterval": 2, "temperature": 1.0,
                    "seed": 1, **(training or {}),
                },
                "evaluation": {"prompts": 4, "batchSize": 4},
                "storage": {"url": str(root)},
            },
        }
        if write:
            (tmp_path / f"{store}.json").write_text(json.dumps(doc))
        return parse(doc)

    return make


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_state(folder)


def _log(store_root: Path) -> list[dict[str, Any]]:
    text = (store_root / "r" / "iter-0" / "member-0" / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_train_writes_final_ema_state_and_log_then_is_a_no_op(make_run, tmp_path: Path) -> None:
    run = make_run()
    records: list[dict[str, Any]] = []
    assert train(run, 0, 0, device="cpu", on_step=records.append) is True
    root = tmp_path / "store"
    store = open_store(str(root))
    member = root / "r" / "iter-0" / "member-0"
    for key in (layout.member_final("r", 0, 0), layout.member_ema("r", 0, 0), layout.member_state("r", 0, 0)):
        assert store.has_checkpoint(key), key
        store.verify_checkpoint(key)
    assert (member / "final" / "model.safetensors").is_file() and (member / "final" / "tokenizer.json").is_file()
    state = json.loads((member / "state" / STATE_JSON).read_text())
    assert state["step"] == 4 and state["steps"] == 6  # the last interval before T; final marks the end

    base, final, ema = _tensors(root / "r" / "base"), _tensors(member / "final"), _tensors(member / "ema")
    assert set(final) == set(base) and all(t.dtype == torch.float32 for t in final.values())
    moved = [n for n in base if not torch.equal(base[n], final[n])]
    assert len(moved) == len(base)  # every parameter was trained
    # The EMA trails the policy: it left θ_init, but by less than the policy did.
    dist = lambda a, b: sum(float((a[n] - b[n]).double().norm() ** 2) for n in base) ** 0.5  # noqa: E731
    assert 0 < dist(ema, base) < dist(final, base)
    assert load_causal_lm(member / "final", "float32").config.n_layer == 2  # a loadable HF checkpoint

    log = _log(root)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] == [r["step"] for r in records]
    assert all(set(r) == LOG_FIELDS for r in log)
    assert set(log[0]["timing"]) == {"generate", "score", "reference", "train", "ema"}
    assert log[0]["kl_anchor"] == pytest.approx(0.0, abs=1e-6)  # θ = θ_ema = θ_init at the first step
    assert log[-1]["kl_anchor"] > 0 and log[-1]["kl_init"] > 0
    assert log[0]["lr"] == pytest.approx(5e-3) and log[-1]["lr"] == pytest.approx(1e-2)  # warm-up of 2 steps
    # The progress watchdog's heartbeat (operator/watchdog.py) shows the last step.
    beat = json.loads((member / "heartbeat.json").read_text())
    assert beat["step"] == 6 and beat["steps"] == 6 and beat["time"] >= log[-1]["time"]

    # Re-running a finished member does nothing.
    manifest = (member / "final" / MANIFEST).read_bytes()
    assert train(run, 0, 0, device="cpu") is False
    assert (member / "final" / MANIFEST).read_bytes() == manifest


def test_resume_after_a_crash_is_bit_exact(make_run, tmp_path: Path) -> None:
    train(make_run("straight"), 0, 0, device="cpu")

    class Crash(RuntimeError):
        pass

    def crash_at_step_3(record: dict[str, Any]) -> None:
        if record["step"] == 3:  # the state on disk is from step 2: step 3 must be redone identically
            raise Crash

    crashed = make_run("crashed")
    with pytest.raises(Crash):
        train(crashed, 0, 0, device="cpu", on_step=crash_at_step_3)
    store = open_store(str(tmp_path / "crashed"))
    assert not store.has_checkpoint(layout.member_final("r", 0, 0))
    assert json.loads((tmp_path / "crashed/r/iter-0/member-0/state" / STATE_JSON).read_text())["step"] == 2
    train(crashed, 0, 0, device="cpu")

    for kind in ("final", "ema"):
        a = _tensors(tmp_path / "straight/r/iter-0/member-0" / kind)
        b = _tensors(tmp_path / "crashed/r/iter-0/member-0" / kind)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), kind
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("time", "step_seconds", "tokens_per_second", "timing")} for r in log]  # noqa: E731
    assert strip(_log(tmp_path / "straight")) == strip(_log(tmp_path / "crashed"))


@pytest.mark.parametrize("anchor", ["sft", "none"])
def test_other_anchors(make_run, tmp_path: Path, anchor: str) -> None:
    train(make_run(warp={"anchor": anchor, "steps": 3}), 0, 0, device="cpu")
    log = _log(tmp_path / "store")
    # After a step the policy has moved: the KL estimates are non-zero. Their sign is not fixed: each is
    # a Monte-Carlo mean over 8 samples of log π − log π_init, which can be negative.
    if anchor == "sft":  # the anchor is θ_init: both KLs are the same estimate
        assert all(r["kl_anchor"] == r["kl_init"] for r in log) and log[-1]["kl_init"] != 0
    else:
        assert all(r["kl_anchor"] is None for r in log) and log[-1]["kl_init"] != 0


def test_reward_rises_on_the_toy_task(make_run, tmp_path: Path) -> None:
    run = make_run(
        warp={"steps": 40, "beta": 0.02},
        training={"batchSize": 8, "samplesPerPrompt": 4, "microBatchSize": 8, "learningRate": 2e-2,
                  "checkpointInterval": 100, "maxNewTokens": 12},
    )
    train(run, 0, 0, device="cpu", eval_every=20, eval_prompts=8)
    log = _log(tmp_path / "store")
    first = sum(r["reward"] for r in log[:5]) / 5
    last = sum(r["reward"] for r in log[-5:]) / 5
    assert last > first + 0.1, (first, last)
    evals = [r["eval"] for r in log if "eval" in r]
    assert [r["step"] for r in log if "eval" in r] == [20, 40]
    assert all(set(e) == {"reward", "reward_stderr", "kl_sft", "kl_sft_stderr", "length", "per_prompt"} for e in evals)
    assert all(len(e["per_prompt"]["reward"]) == 8 for e in evals)
    assert evals[-1]["kl_sft"] > 0


def test_trajectory_evaluations_carry_the_gold_reward(make_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gold reward (here the training reward itself) is scored on the same completions at every trajectory
    point; per-prompt values stay in metrics.jsonl, out of the progress lines."""
    run = make_run(warp={"steps": 2})
    gold = run.spec.reward.callable
    spec = run.spec.model_copy(update={"evaluation": run.spec.evaluation.model_copy(
        update={"gold_reward": GoldRewardSpec(callable=gold)})})
    train(run.model_copy(update={"spec": spec}), 0, 0, device="cpu", eval_every=1, eval_prompts=4)
    evals = [r["eval"] for r in _log(tmp_path / "store") if "eval" in r]
    assert len(evals) == 2 and all(e["gold"] == e["reward"] and len(e["per_prompt"]["gold"]) == 4 for e in evals)
    progress = [json.loads(line.split(" ", 1)[1]) for line in capsys.readouterr().out.splitlines()
                if line.startswith("KWARP_PROGRESS ")]
    assert [p["eval"]["gold"] for p in progress] == [e["gold"] for e in evals]
    assert all("per_prompt" not in p["eval"] for p in progress)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if shutil.which("prometheus-pushgateway") is None:
        pytest.skip("prometheus-pushgateway is not installed")
    gw = Pushgateway.start(tmp_path)  # on a port it picks itself (tests/prom.py)
    try:
        yield gw.address
    finally:
        gw.stop()


def test_metrics_are_served_and_pushed(make_run, monkeypatch: pytest.MonkeyPatch, pushgateway: str) -> None:
    port = _free_port()
    monkeypatch.setenv("KWARP_METRICS_PORT", str(port))
    monkeypatch.setenv("KWARP_PUSHGATEWAY", pushgateway)
    monkeypatch.setenv("KWARP_NAMESPACE", "team-a")
    scraped: list[str] = []

    def scrape(record: dict[str, Any]) -> None:
        scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())

    train(make_run(warp={"steps": 2}), 0, 0, device="cpu", on_step=scrape)
    labels = 'iteration="0",member="0",namespace="team-a",run="r"'
    assert f"kwarp_trainer_step{{{labels}}} 2.0" in scraped[-1]
    assert f"kwarp_trainer_reward{{{labels}}}" in scraped[-1]
    pushed = urllib.request.urlopen(f"http://{pushgateway}/metrics", timeout=5).read().decode()
    step_lines = [ln for ln in pushed.splitlines() if ln.startswith("kwarp_trainer_step{")]
    assert step_lines and all('job="kwarp"' in ln and 'component="trainer"' in ln and 'member="0"' in ln for ln in step_lines)
    assert step_lines[0].endswith(" 2")


def test_cli_validates_member_and_runs(make_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(write=True)
    spec = str(tmp_path / "store.json")
    assert kwarp_main(["train", "--iteration", "0", "--member", "1", "--spec", spec]) == 2
    assert "outside 0..0" in capsys.readouterr().err
    assert kwarp_main(["train", "--iteration", "0", "--member", "0", "--spec", spec, "--steps", "2", "--device", "cpu"]) == 0
    progress = [json.loads(ln[len(PROGRESS_PREFIX):]) for ln in capsys.readouterr().out.splitlines()
                if ln.startswith(PROGRESS_PREFIX)]
    assert [p["step"] for p in progress] == [1, 2] and all(p["steps"] == 2 for p in progress)
    assert open_store(str(tmp_path / "store")).has_checkpoint(layout.member_final("r", 0, 0))


def test_cli_takes_the_member_from_a_gang_pods_index(make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A pod of a queued run's gang Job runs `kwarp train --iteration I` with its completion index in
    $KWARP_MEMBER (operator/jobs.py gang_manifest); a member already published is not trained again."""
    make_run(write=True)
    spec = str(tmp_path / "store.json")
    monkeypatch.delenv("KWARP_MEMBER", raising=False)
    assert kwarp_main(["train", "--iteration", "0", "--spec", spec]) == 2
    assert "--member is missing and $KWARP_MEMBER is ''" in capsys.readouterr().err
    monkeypatch.setenv("KWARP_MEMBER", "1")  # read, and checked like --member (this run has one member)
    assert kwarp_main(["train", "--iteration", "0", "--spec", spec]) == 2
    assert "--member 1 is outside 0..0" in capsys.readouterr().err
    monkeypatch.setenv("KWARP_MEMBER", "0")
    assert kwarp_main(["train", "--iteration", "0", "--spec", spec, "--steps", "2", "--device", "cpu"]) == 0
    store = open_store(str(tmp_path / "store"))
    assert store.has_checkpoint(layout.member_final("r", 0, 0))
    manifest = store.get_bytes(f"{layout.member_final('r', 0, 0)}/{MANIFEST}")
    capsys.readouterr()
    # The index again (a later gang attempt has every index): the published member is skipped.
    assert kwarp_main(["train", "--iteration", "0", "--spec", spec, "--steps", "2", "--device", "cpu"]) == 0
    assert "is complete; nothing to do" in capsys.readouterr().out
    assert store.get_bytes(f"{layout.member_final('r', 0, 0)}/{MANIFEST}") == manifest


def test_sigkill_never_exposes_a_partial_checkpoint_and_the_run_resumes(make_run, tmp_path: Path) -> None:
    """SIGKILL a trainer that saves its state every step, at a moment unrelated to its saves."""
    run = make_run(warp={"steps": 400}, training={"checkpointInterval": 1}, write=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m", "kwarp.cli", "train", "--iteration", "0", "--member", "0",
           "--spec", str(tmp_path / "store.json"), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX):])["step"] >= 5:
                break
        time.sleep(0.037)  # land somewhere inside a later step or save
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    root = tmp_path / "store"
    store = open_store(str(root))
    member = "r/iter-0/member-0"
    listed = store.list(member)
    assert not store.has_checkpoint(layout.member_final("r", 0, 0))
    assert all(not part.startswith(".") for key in listed for part in key.split("/"))  # staging stays hidden
    files = (layout.member_log("r", 0, 0), layout.member_heartbeat("r", 0, 0))
    folders = {key.rsplit("/", 1)[0] for key in listed if key not in files}
    assert folders == {layout.member_state("r", 0, 0)}
    verify(root / layout.member_state("r", 0, 0), hashes=True)  # the one visible checkpoint is complete
    saved = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())["step"]
    assert saved >= 4  # the progress line of step 5 precedes its save

    # The same member, restarted with a shorter T, resumes from the saved step and finishes.
    records: list[dict[str, Any]] = []
    train(run, 0, 0, device="cpu", steps=saved + 2, on_step=records.append)
    assert [r["step"] for r in records] == [saved + 1, saved + 2]
    assert [r["step"] for r in _log(root)] == list(range(1, saved + 3))
    assert store.has_checkpoint(layout.member_final("r", 0, 0))


# ------------------------------------------------------------------------------ the non-finite guard


def _optimizer_steps(state_folder: Path) -> set[float]:
    from safetensors.torch import load_file

    saved = load_file(state_folder / "optimizer.safetensors")
    return {float(t) for k, t in saved.items() if k.endswith("/step")}


def test_a_nan_reward_skips_its_steps_counts_them_and_publishes_finite_weights(
    make_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    run = make_run(training={"checkpointInterval": 2})
    run = run.model_copy(update={"spec": run.spec.model_copy(update={
        "reward": run.spec.reward.model_copy(update={"callable": "kwarp_train_rewards:nan_on_calls_2_and_3"})})})
    importlib.import_module("kwarp_train_rewards").CALLS[0] = 0
    port = _free_port()
    monkeypatch.setenv("KWARP_METRICS_PORT", str(port))
    scraped: list[str] = []

    def scrape(record: dict[str, Any]) -> None:
        scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())

    assert train(run, 0, 0, device="cpu", on_step=scrape) is True
    root = tmp_path / "store"
    log = _log(root)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r.get("nonfinite", False) for r in log] == [False, True, True, False, False, False]
    assert all(r["reward"] is None and r["loss"] is None for r in log[1:3])  # nan is written as null
    labels = 'iteration="0",member="0",namespace="default",run="r"'
    assert f"kwarp_trainer_nonfinite_steps_total{{{labels}}} 2.0" in scraped[-1]
    assert f"kwarp_trainer_nonfinite_steps_total{{{labels}}} 0.0" in scraped[0]

    member = root / "r" / "iter-0" / "member-0"
    # Skipped steps do not step Adam: the state after step 4 has seen two updates (steps 1 and 4).
    assert _optimizer_steps(member / "state") == {2.0}
    state = json.loads((member / "state" / STATE_JSON).read_text())
    assert state["step"] == 4 and state["extra"] == {"nonfinite_streak": 0, "nonfinite_total": 2}
    for kind in ("final", "ema"):
        tensors = _tensors(member / kind)
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values()), kind


def test_non_finite_steps_in_a_row_fail_the_member_and_publish_nothing_new(make_run, tmp_path: Path) -> None:
    from kwarp.trainer.guards import NonFiniteError

    run = make_run(training={"checkpointInterval": 2, "maxNonFiniteSteps": 3})
    run = run.model_copy(update={"spec": run.spec.model_copy(update={
        "reward": run.spec.reward.model_copy(update={"callable": "kwarp_train_rewards:always_nan"})})})
    with pytest.raises(NonFiniteError, match=r"steps 1\.\.3: 3 steps in a row had a non-finite loss"):
        train(run, 0, 0, device="cpu")
    root = tmp_path / "store"
    store = open_store(str(root))
    assert not store.has_checkpoint(layout.member_final("r", 0, 0))
    assert not store.has_checkpoint(layout.member_ema("r", 0, 0))
    member = root / "r" / "iter-0" / "member-0"
    state = json.loads((member / "state" / STATE_JSON).read_text())  # saved after step 2: still θ_init
    assert state["step"] == 2 and state["extra"]["nonfinite_streak"] == 2
    from safetensors.torch import load_file

    base, saved = _tensors(root / "r" / "base"), load_file(member / "state" / "policy.safetensors")
    assert saved.keys() <= base.keys() and all(torch.equal(base[n], saved[n]) for n in saved)
    assert [r.get("nonfinite") for r in _log(root)] == [True, True, True]  # the log shows why

    # A retry resumes with the streak it had: one more non-finite step fails it again, at step 3.
    with pytest.raises(NonFiniteError, match=r"steps 1\.\.3"):
        train(run, 0, 0, device="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_finds_nan_and_both_infinities_anywhere(dtype: torch.dtype) -> None:
    from kwarp.trainer.guards import finite

    for bad in (float("nan"), float("inf"), float("-inf")):
        for at in (0, 17, 34):
            t = torch.randn(5, 7).to(dtype)
            t.view(-1)[at] = bad
            assert not finite(t), (bad, at)
        assert not finite(torch.tensor(bad, dtype=dtype))
    assert finite(torch.randn(5, 7).to(dtype)) and finite(torch.empty(0, dtype=dtype))
    assert finite(torch.arange(3))  # integer state (none today) cannot hold nan


def test_non_finite_weights_are_never_published(make_run, tmp_path: Path) -> None:
    """Skipping non-finite steps keeps nan out through the gradient, not by every route: here θ_init holds
    an inf in a position embedding no prompt reaches, so every step is finite. The state is checked before
    it is published, and the store keeps nothing non-finite."""
    from kwarp.trainer.guards import NonFiniteError
    from tests.models import variant

    run = make_run(training={"checkpointInterval": 1})
    base = tmp_path / "store" / "r" / "base"
    shutil.rmtree(base)
    variant(tmp_path / "sft", base, lambda n, t: t.index_fill(0, torch.tensor([63]), float("inf")) if n.endswith("wpe.weight") else t)
    with pytest.raises(NonFiniteError, match=r"refusing to publish r/iter-0/member-0/state at step 1: .*wpe\.weight"):
        train(run, 0, 0, device="cpu")
    store = open_store(str(tmp_path / "store"))
    assert not store.has_checkpoint(layout.member_state("r", 0, 0))
    assert not store.has_checkpoint(layout.member_final("r", 0, 0))


# ------------------------------------------------------------------------------------------ SIGTERM


def sigterm_at_step(argv: list[str], env: dict[str, str], cwd: Path, step: int = 3) -> subprocess.CompletedProcess[str]:
    """Start a trainer command, SIGTERM it (as the kubelet does a pod) once its progress line reports `step`,
    and wait for it; killed if it outlives 120 s or the test fails meanwhile. stdout: what followed that line."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX):])["step"] >= step:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_sigterm_saves_the_state_and_the_next_run_resumes_exactly(make_run, tmp_path: Path) -> None:
    """A pod's SIGTERM (eviction, preemption) mid-run: the trainer saves the step it is at, between two
    checkpoint intervals, and exits 143; the next run continues bit for bit as an uninterrupted one."""
    run = make_run(warp={"steps": 400}, training={"checkpointInterval": 1000}, write=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m", "kwarp.cli", "train", "--iteration", "0", "--member", "0",
           "--spec", str(tmp_path / "store.json"), "--device", "cpu"]
    proc = sigterm_at_step(cmd, env, tmp_path)
    err = proc.stderr
    assert proc.returncode == 143, err

    root = tmp_path / "store"
    saved = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())["step"]
    assert 3 <= saved < 400  # no checkpointInterval was reached: this save is the SIGTERM's
    assert f"state saved at step {saved}/400" in err
    assert [r["step"] for r in _log(root)] == list(range(1, saved + 1))

    records: list[dict[str, Any]] = []
    train(run, 0, 0, device="cpu", steps=saved + 2, on_step=records.append)
    assert [r["step"] for r in records] == [saved + 1, saved + 2]
    train(make_run("straight", warp={"steps": 400}, training={"checkpointInterval": 1000}), 0, 0, device="cpu",
          steps=saved + 2)
    for kind in ("final", "ema"):
        a = _tensors(tmp_path / "straight/r/iter-0/member-0" / kind)
        b = _tensors(root / "r/iter-0/member-0" / kind)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), kind
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("time", "step_seconds", "tokens_per_second", "timing")} for r in log]  # noqa: E731
    assert strip(_log(tmp_path / "straight")) == strip(_log(root))
