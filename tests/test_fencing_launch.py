"""A multi-process member's older attempt fenced out: the pod's main process exits 75, whatever its launcher.

The member's older attempt runs as the operator's Job runs it (operator/jobs.py `command`: torchrun's
launcher, two trainer processes over gloo on loopback; a multi-node member: one launcher per node). It is
frozen once it has published a resumable state (SIGSTOP of the whole process tree: a pod behind a network
partition), a newer attempt takes the lease and finishes the member, and the older one is let go. Its main
process is then refused its next write (exit 75), and the pod's own process must exit 75 too: torchrun
alone exits 1, which the Job's podFailurePolicy and a gang count as a failed try of the member.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kwarp.core.plan import Task
from kwarp.operator.jobs import command
from kwarp.store import layout, open_store
from kwarp.store.fencing import FENCED_EXIT_CODE
from kwarp.store.versions import generation_of
from kwarp.trainer.state import STATE_JSON
from kwarp.trainer.train import PROGRESS_PREFIX
from tests.processes import freeze, send
from tests.test_trainer import make_run  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pod_argv(gpus: int, nodes: int) -> list[str]:
    """The trainer Job's container command (a multi-node member's: the PET_* variables say the rest)."""
    cmd, args = command(Task.train(0, 0), gpus, nodes)
    return [str(Path(sys.executable).parent / cmd[0]), *args, "--device", "cpu"]


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-node-two-processes", "two-nodes-one-process-each"])
def test_an_older_multi_process_member_attempt_exits_75_from_the_pods_process_and_publishes_nothing(
    make_run, tmp_path: Path, nodes: int  # noqa: F811
) -> None:
    run = make_run(warp={"steps": 60}, training={"checkpointInterval": 2})
    env = {**os.environ, "KWARP_SPEC": json.dumps(run.to_document()), "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    root = tmp_path / "store"
    if nodes == 1:
        pods = [(_pod_argv(2, 1), env)]
    else:  # the Indexed Job's two pods: static rendezvous at pod 0 (operator/jobs.py multinode_env), here on loopback
        port = str(_free_port())
        pods = [(_pod_argv(1, 2), {**env, "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(i),
                                   "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port}) for i in range(2)]  # fmt: skip
    older = [subprocess.Popen(argv, env=e, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv, e in pods]  # fmt: skip
    try:
        assert older[0].stdout is not None
        for line in older[0].stdout:  # step 3 printed: the state of step 2 is published (saved before step 3 runs)
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX):])["step"] >= 3:
                break
        else:
            older[0].wait(timeout=60)
            raise AssertionError(f"the older attempt ended before its step 3: {older[0].stderr.read()[-3000:]}")  # type: ignore[union-attr]
        frozen = [pid for pod in older for pid in freeze(pod.pid)]
        saved = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())
        assert saved["world_size"] == 2 and 2 <= saved["step"] < 60
        saved = saved["step"]

        # The newer attempt (a retried Job's pod, say; one process keeps the test short) takes the lease,
        # resumes from the older one's last state and finishes the member.
        newer = subprocess.run(
            [sys.executable, "-P", "-m", "kwarp", "train", "--iteration", "0", "--member", "0", "--device", "cpu",
             "--steps", str(saved + 4)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert newer.returncode == 0, newer.stdout[-3000:] + newer.stderr[-3000:]

        send(frozen, signal.SIGCONT)  # the partition heals
        outs = [pod.communicate(timeout=600) for pod in older]
    finally:
        for pod in older:
            if pod.poll() is None:
                send([pod.pid], signal.SIGCONT)
                pod.kill()
                pod.wait()
    for pod, (out, err) in zip(older, outs, strict=True):
        # Every pod of the older attempt: exit 75 from the pod's own process, not torchrun's 1.
        assert pod.returncode == FENCED_EXIT_CODE, (pod.returncode, out[-2000:], err[-4000:])
        assert "kwarp torchrun: fenced out:" in err
    assert "kwarp train: fenced out:" in outs[0][1]  # the main process was refused its write
    assert f"worker rank 0 exited {FENCED_EXIT_CODE}" in outs[0][1]
    if nodes == 2:  # the other node's worker died of the broken collective: its launcher read the lease
        assert "a newer attempt of task i0-m0 holds the lease (epoch 2" in outs[1][1], outs[1][1][-3000:]

    store = open_store(str(root))
    assert json.loads((root / layout.lease("r", "i0-m0")).read_text())["epoch"] == 2
    for key in (layout.member_final("r", 0, 0), layout.member_ema("r", 0, 0), layout.member_state("r", 0, 0)):
        target = os.readlink(root / key)
        assert generation_of(Path(target).name) == 2, (key, target)  # the newer attempt's version, whole
        store.verify_checkpoint(key)
    assert json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())["step"] == saved + 2
    steps = [json.loads(ln)["step"] for ln in (root / layout.member_log("r", 0, 0)).read_text().splitlines()]
    assert steps == list(range(1, saved + 5))  # no step of the older attempt after the takeover
