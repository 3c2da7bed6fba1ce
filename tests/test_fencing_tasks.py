"""Two overlapping attempts of one task: the task commands claim their lease, the older attempt is fenced out.

The overlap is made exact, not timed: the older attempt runs as a real process until it has published a
resumable state, is frozen (SIGSTOP: a pod behind a network partition, a lingering predecessor of a
retried Job), a newer attempt of the same task runs to its end, and the older one is let go again. It
must then stop at its next write with the fenced-out exit code, and what the store holds is the newer
attempt's, whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kwarp.store import layout, open_store
from kwarp.store.fencing import FENCED_EXIT_CODE
from kwarp.store.versions import generation_of
from kwarp.trainer.state import STATE_JSON
from kwarp.trainer.train import PROGRESS_PREFIX
from tests.processes import freeze, send
from tests.test_trainer import make_run  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore")


def _train_argv(*extra: str) -> list[str]:
    return [sys.executable, "-P", "-m", "kwarp", "train", "--iteration", "0", "--member", "0", "--device", "cpu", *extra]


def _env(run_doc: dict, cwd: Path) -> dict[str, str]:
    return {**os.environ, "KWARP_SPEC": json.dumps(run_doc), "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}


def test_an_older_member_attempt_is_fenced_out_and_the_final_checkpoint_is_the_newer_ones(make_run, tmp_path: Path) -> None:  # noqa: F811
    # T = 60: the older attempt cannot finish while the test looks on; it saves every 2 steps.
    run = make_run(warp={"steps": 60}, training={"checkpointInterval": 2})
    env = _env(run.to_document(), tmp_path)
    root = tmp_path / "store"
    older = subprocess.Popen(_train_argv(), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert older.stdout is not None
        for line in older.stdout:  # step 3 printed: the state of step 2 is published (saved before step 3 runs)
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX):])["step"] >= 3:
                break
        frozen = freeze(older.pid)
        saved = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())["step"]
        assert 2 <= saved < 60

        # The newer attempt (a retried Job's pod, say) takes the lease, resumes from the older one's last
        # state and finishes the member (--steps: 4 steps past that state, to keep the test short; it saves
        # its own state 2 steps in).
        newer = subprocess.run(_train_argv("--steps", str(saved + 4)), env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert newer.returncode == 0, newer.stdout[-3000:] + newer.stderr[-3000:]
        assert f"resuming r i0 m0 at step {saved}/{saved + 4}" in newer.stdout

        send(frozen, signal.SIGCONT)  # the partition heals: the older attempt goes on where it was
        out, err = older.communicate(timeout=600)
    finally:
        if older.poll() is None:
            send([older.pid], signal.SIGCONT)
            older.kill()
            older.wait()
    assert older.returncode == FENCED_EXIT_CODE, (out[-2000:], err[-3000:])
    assert "kwarp train: fenced out:" in err
    assert "a newer attempt of task i0-m0 holds the lease (epoch 2" in err
    assert "this attempt (epoch 1," in err and "publishes nothing more" in err

    store = open_store(str(root))
    lease = json.loads((root / layout.lease("r", "i0-m0")).read_text())
    assert lease["epoch"] == 2
    for key in (layout.member_final("r", 0, 0), layout.member_ema("r", 0, 0), layout.member_state("r", 0, 0)):
        # Each pointer names a version of the newer attempt's generation (its epoch), and the version is whole.
        target = os.readlink(root / key)
        assert generation_of(Path(target).name) == 2, (key, target)
        store.verify_checkpoint(key)
    final_state = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())
    assert final_state["step"] == saved + 2  # the newer attempt's, not a later state of the older one
    steps = [json.loads(ln)["step"] for ln in (root / layout.member_log("r", 0, 0)).read_text().splitlines()]
    assert steps == list(range(1, saved + 5))  # the newer attempt's log: no step of the older one after the takeover
