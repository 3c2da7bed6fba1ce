"""FSDP members (spec.training.strategy: fsdp) on a CPU: two processes over gloo, started by torchrun.

- The update of a 2-process sharded member equals a single process's on the same global batch:
  loss, gradient norm, KLs, weights and EMA, after a few steps.
- A sharded member killed mid-run resumes exactly: its final and EMA equal an uninterrupted run's,
  bit for bit, and both are ordinary Hugging Face folders.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from kwarp.core.plan import Task
from kwarp.operator.jobs import command
from kwarp.policy import completion_mask, load_causal_lm
from kwarp.store import layout, open_store
from kwarp.trainer.state import STATE_JSON
from kwarp.trainer.train import PROGRESS_PREFIX
from tests.models import load_state
from tests.processes import descendants, send, wait_gone
from tests.test_trainer import make_run  # noqa: F401 - the fixture

WORKER = Path(__file__).with_name("fsdp_worker.py")
BIN = Path(sys.executable).parent
# float32 on a CPU. Sharding changes only the order of float additions (gloo's reduce-scatter of two
# half-batch gradients against one sum over the whole batch), so the two runs differ by rounding. Measured
# (3 steps, lr 1e-2, tiny GPT-2): the step metrics by at most 4e-6 relative (the KLs), the weights by at
# most 5.7e-6 against a movement of 0.025 per weight (the largest on the attention's key biases, whose
# true gradient is zero, so Adam scales rounding noise up to an update), the EMA by 7.7e-7. The bounds
# below leave a margin of 3-10x; an error of substance (a shard not updated, an EMA not moved, a stale
# gathered anchor, a wrong normaliser in the metrics) is at least 1e-3.
RECORD_RTOL, WEIGHT_ATOL = 5e-5, 2e-5


def _env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}


def _fixed_batches(model_dir: Path, steps: int, prompts: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`steps` global batches of sampled-looking rows: random prompts (left-padded), completions cut at EOS."""
    g = torch.Generator().manual_seed(seed)
    eos = json.loads((model_dir / "config.json").read_text())["eos_token_id"]
    out = {}
    for step in range(steps):
        n, width, cwidth = prompts * k, 5, 6
        prompt_ids = torch.randint(4, 100, (prompts, width), generator=g).repeat_interleave(k, 0)
        prompt_mask = torch.ones_like(prompt_ids)
        prompt_mask[0::3, :2] = 0  # some left padding
        prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, 1)
        completion = torch.randint(4, 100, (n, cwidth), generator=g)
        completion[1::4, 3] = eos  # some completions end early
        out.update({
            f"{step}/prompt_ids": prompt_ids, f"{step}/prompt_mask": prompt_mask, f"{step}/completion_ids": completion,
            f"{step}/completion_mask": completion_mask(completion, [eos]),
            f"{step}/rewards": torch.rand(n, generator=g),
        })  # fmt: skip
    return out


def _worker(cwd: Path, spec: Path, init: Path, batch: Path, out: Path, processes: int) -> dict[str, Any]:
    launcher = [str(BIN / "torchrun"), "--standalone", "--nnodes", "1", "--nproc-per-node", str(processes)]
    argv = [*(launcher if processes > 1 else [sys.executable, "-P"]), str(WORKER), str(spec), str(init), str(batch), str(out)]
    proc = subprocess.run(argv, env=_env(cwd), cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "records.json").read_text())


@pytest.mark.parametrize("anchor", ["ema", "sft"])
def test_two_sharded_processes_equal_one_process_on_the_same_global_batch(make_run, tmp_path: Path,  # noqa: F811
                                                                          anchor: str) -> None:
    run = make_run(warp={"anchor": anchor}, training={"strategy": "fsdp", "microBatchSize": 1, "maxGradNorm": 0.5})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(run.to_document()))
    init = tmp_path / "sft"
    batch = tmp_path / "batch.safetensors"
    save_file(_fixed_batches(init, steps=3, prompts=4, k=2), batch)

    one = _worker(tmp_path, spec, init, batch, tmp_path / "one", processes=1)
    two = _worker(tmp_path, spec, init, batch, tmp_path / "two", processes=2)
    assert (one["world"], one["sharded"], two["world"], two["sharded"]) == (1, False, 2, True)
    for a, b in zip(one["records"], two["records"], strict=True):
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=RECORD_RTOL, abs=1e-7), key
    assert one["records"][-1]["kl_anchor"] != 0 and one["records"][0]["grad_norm"] > 0.5  # clipping was exercised

    w1, w2 = load_file(tmp_path / "one" / "weights.safetensors"), load_file(tmp_path / "two" / "weights.safetensors")
    base = load_state(init)
    assert w1.keys() == w2.keys() and {k.split("/", 1)[1] for k in w1} == set(base)
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=0.0, atol=WEIGHT_ATOL, msg=key)
    moved = lambda kind: sum(float((w1[f"{kind}/{n}"] - base[n]).norm()) for n in base)  # noqa: E731
    assert moved("policy") > moved("ema") > 0  # both moved; the EMA trails the policy


def _launch_member(cwd: Path, run_doc: dict[str, Any], processes: int) -> subprocess.Popen[str]:
    cmd, args = command(Task.train(0, 0), processes)
    argv = [str(BIN / cmd[0]), *args, "--device", "cpu"]
    env = {**_env(cwd), "KWARP_SPEC": json.dumps(run_doc)}
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the launcher and every trainer at once, as the loss of a node would; wait until all are gone."""
    pids = [proc.pid, *descendants(proc.pid)]
    send(pids, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_gone(pids[1:], 60)


def test_a_killed_sharded_member_resumes_exactly_and_publishes_hugging_face_folders(make_run, tmp_path: Path) -> None:  # noqa: F811
    training = {"strategy": "fsdp", "checkpointInterval": 1}
    # Killed with most of its steps to go: a member of 4 steps, killed 0.2 s after its line of step 2 was
    # read, can finish first (a faster machine, or a test process that reads late on a loaded one), and
    # the test then kills nothing. The saved step, whatever it is, sets how far both runs below go.
    crashed = make_run("crashed", warp={"steps": 1000}, training=training)
    proc = _launch_member(tmp_path, crashed.to_document(), 2)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX):])["step"] >= 2:
                break
        time.sleep(0.2)  # somewhere in a later step or its save
    finally:
        _kill_tree(proc)
    root = tmp_path / "crashed"
    store = open_store(str(root))
    assert not store.has_checkpoint(layout.member_final("r", 0, 0))
    saved = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())
    assert 1 <= saved["step"] < 1000 and saved["world_size"] == 2  # the line of step 2 precedes its save
    steps = saved["step"] + 2

    straight = make_run("straight", warp={"steps": steps}, training=training)
    proc = _launch_member(tmp_path, straight.to_document(), 2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert "2 process(es) on cpu (fsdp)" in out

    resumed = crashed.to_document()
    resumed["spec"]["warp"]["steps"] = steps
    proc = _launch_member(tmp_path, resumed, 2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert f"resuming r i0 m0 at step {saved['step']}/{steps}" in out

    for kind in ("final", "ema"):
        a = load_state(tmp_path / "straight" / f"r/iter-0/member-0/{kind}")
        b = load_state(root / f"r/iter-0/member-0/{kind}")
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), kind
        folder = root / f"r/iter-0/member-0/{kind}"
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["GPT2LMHeadModel"]  # not fully_shard's FSDPGPT2LMHeadModel
        model = load_causal_lm(folder, "float32")  # an ordinary Hugging Face folder, as the merger reads it
        assert all(not hasattr(p, "device_mesh") for p in model.parameters())
    base = load_state(tmp_path / "sft")
    assert any(not torch.equal(base[n], a[n]) for n in base)
