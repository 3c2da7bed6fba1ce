"""A member trained by several processes on a CPU, started exactly as the operator's Job starts it.

The Job's command (operator/jobs.py) runs here as a local process tree: torchrun starts one trainer
per "GPU", the trainers talk over gloo on loopback, and the member is published once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kwarp.core.plan import Task
from kwarp.operator.jobs import command
from kwarp.store import layout, open_store
from kwarp.trainer.state import STATE_JSON
from kwarp.trainer.train import PROGRESS_PREFIX
from tests.models import load_state
from tests.test_trainer import make_run, sigterm_at_step  # noqa: F401 - make_run is the fixture

pytestmark = pytest.mark.filterwarnings("ignore")


def run_job_command(run_doc: dict, cwd: Path, gpus: int, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The trainer Job's container command for `gpus` GPUs, run locally with the Job's KWARP_SPEC."""
    cmd, args = command(Task.train(0, 0), gpus)
    argv = [str(Path(sys.executable).parent / cmd[0]), *args, "--device", "cpu"]
    env = {**os.environ, "KWARP_SPEC": json.dumps(run_doc), "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_jobs_launcher_starts_one_trainer_per_gpu_and_they_train_one_member(make_run, tmp_path: Path) -> None:  # noqa: F811
    run = make_run(warp={"steps": 3})
    proc = run_job_command(run.to_document(), tmp_path, gpus=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "store"
    state = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())
    assert state["world_size"] == 2  # two trainers took part, not one started twice or once
    assert "2 process(es) on cpu" in proc.stdout
    progress = [json.loads(ln[len(PROGRESS_PREFIX):]) for ln in proc.stdout.splitlines() if ln.startswith(PROGRESS_PREFIX)]
    assert [p["step"] for p in progress] == [1, 2, 3]  # the main process alone reports
    store = open_store(str(root))
    assert store.has_checkpoint(layout.member_final("r", 0, 0)) and store.has_checkpoint(layout.member_ema("r", 0, 0))
    base, final = load_state(root / "r" / "base"), load_state(root / layout.member_final("r", 0, 0))
    assert set(base) == set(final) and any(not base[n].equal(final[n]) for n in base)


def test_sigterm_to_the_launcher_stops_every_trainer_at_one_step_and_the_state_resumes(make_run, tmp_path: Path) -> None:  # noqa: F811
    """The pod's SIGTERM reaches torchrun (the container's process), which passes it to its trainers: they
    agree on one step (trainer/signals.py), the state of that step is saved once, with world size 2, and
    a run after it resumes there."""
    run = make_run(warp={"steps": 400}, training={"checkpointInterval": 1000})
    cmd, args = command(Task.train(0, 0), 2)
    argv = [str(Path(sys.executable).parent / cmd[0]), *args, "--device", "cpu"]
    env = {**os.environ, "KWARP_SPEC": json.dumps(run.to_document()), "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    stopped = sigterm_at_step(argv, env, tmp_path)
    out, err = stopped.stdout, stopped.stderr
    root = tmp_path / "store"
    state = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())
    assert state["world_size"] == 2 and 3 <= state["step"] < 400, (out[-2000:], err[-3000:])
    assert f"saved at step {state['step']}/400" in out + err
    assert not open_store(str(root)).has_checkpoint(layout.member_final("r", 0, 0))

    doc = run.to_document()
    doc["spec"]["warp"]["steps"] = state["step"] + 1  # one step more than the saved state holds
    resumed = run_job_command(doc, tmp_path, gpus=2)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming r i0 m0 at step {state['step']}/{state['step'] + 1}" in resumed.stdout
    assert open_store(str(root)).has_checkpoint(layout.member_final("r", 0, 0))
