"""`kwarp run` and a task another runner holds: it says who holds it, waits with a bound, never takes it over.

Two runners of one run share its store folder (two machines on one shared folder: each its own log folder
and lock). The first, a real `kwarp run` process, trains member i0-m0; the second starts an attempt of the
same member, which claims the lease: the first runner's attempt is fenced out, and it waits. Then the
second runner dies (its trainer killed): no sign of life any more. After --wait-for-lease seconds the
first runner stops with HELD_EXIT_CODE and a message naming the task, the holder and the lease's age,
and what to do; the lease is still the dead holder's (nothing taken over), the task was started once.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from kwarp.core.plan import Task
from kwarp.core.spec import parse
from kwarp.run.held import HELD_EXIT_CODE, HeldTasks, Holder, describe
from kwarp.run.runner import LocalExecutor
from kwarp.store import layout, open_store
from tests.test_trainer import make_run  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore")

T0 = 1_700_000_000.0


def test_a_wait_ends_after_the_bound_without_a_sign_of_life_and_each_sign_restarts_its_clock() -> None:
    task = Task.train(0, 1)
    held = HeldTasks(bound=60)
    first = Holder(epoch=2, holder="host-b pid 7", nonce="n2", claimed=T0 - 300, beat={"step": 4, "steps": 9, "time": T0 - 10})
    held.add(task, first, T0)
    assert task in held and list(held) == [task]
    assert not held.look(task, first, T0 + 50) and held.expired(T0 + 59) == []  # the same heartbeat: no sign
    beat = Holder(epoch=2, holder="host-b pid 7", nonce="n2", claimed=T0 - 300, beat={"step": 5, "steps": 9, "time": T0 + 55})
    assert held.look(task, beat, T0 + 58)  # a step: the clock restarts
    assert held.expired(T0 + 117) == [] and held.expired(T0 + 118) == [(task, beat, 60.0)]
    claim = Holder(epoch=3, holder="pod p", nonce="n3", claimed=T0 + 100)
    assert held.look(task, claim, T0 + 110) and held.expired(T0 + 169) == []  # a newer claim is a sign too
    held.forget(frozenset({task}))
    assert task not in held and held.expired(T0 + 1000) == []
    assert describe(task, beat, T0 + 60) == (
        "task i0-m1 is held by host-b pid 7 (lease epoch 2, claimed 2023-11-14 22:08:20 UTC, 6 min ago; "
        "last heartbeat at step 5/9, 5 s ago)"
    )
    assert describe(Task.merge(0), claim, T0 + 100) == (
        "task i0-merge is held by pod p (lease epoch 3, claimed 2023-11-14 22:15:00 UTC, 0 s ago)"
    )
    assert describe(task, Holder(None, None, None, None), T0) == "task i0-m1 has no readable lease (deleted?)"


def _lines_until(stream: io.TextIOBase, marker: str, seen: list[str]) -> None:
    for line in stream:
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"{marker!r} never came:\n{''.join(seen)[-4000:]}")


def test_a_runner_whose_task_another_runner_holds_names_the_holder_and_stops_after_the_bound(make_run, tmp_path: Path) -> None:  # noqa: F811
    make_run(warp={"steps": 100000}, training={"checkpointInterval": 1}, write=True)  # never finishes here
    root = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    bound = 15
    first = subprocess.Popen(
        [sys.executable, "-P", "-m", "kwarp", "run", str(tmp_path / "store.json"), "--plain", "--no-report",
         "--parallel", "1", "--wait-for-lease", str(bound)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    second: LocalExecutor | None = None
    seen: list[str] = []
    try:
        # The first runner's trainer holds the member's lease (after the prepare task).
        deadline = time.monotonic() + 600
        while not (leases := list(root.glob("**/leases/i0-m0.json"))):
            assert first.poll() is None and time.monotonic() < deadline, "the first runner's trainer never claimed"
            time.sleep(0.2)
        assert json.loads(leases[0].read_text())["epoch"] == 1

        # The second runner (another machine: its own log folder) starts its attempt of the member.
        doc = json.loads((tmp_path / "store.json").read_text())
        second = LocalExecutor(parse(doc), open_store(str(root)), console=Console(file=io.StringIO()), live=False,
                               log_dir=tmp_path / "second-logs", parallel=1, extra_env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
        assert root / second.key == leases[0].parent.parent  # the same run, the same folder
        second.claim()
        second.start(Task.train(0, 0), 0)
        assert first.stdout is not None
        _lines_until(first.stdout, "fenced i0-m0", seen)  # the first runner's attempt lost the lease
        holder = f"{socket.gethostname()} pid {second.procs[Task.train(0, 0)].popen.pid}"
        assert f"task i0-m0 is held by {holder} (lease epoch 2, claimed " in seen[-1], seen[-1]
        assert f"up to {bound} s without a sign of its progress" in seen[-1]

        os.killpg(second.procs[Task.train(0, 0)].popen.pid, signal.SIGKILL)  # the second runner dies
        rest, _ = first.communicate(timeout=300)
    finally:
        if second is not None:
            second.stop_all()
        if first.poll() is None:
            first.kill()
            first.wait()
    out = "".join(seen) + rest
    assert first.returncode == HELD_EXIT_CODE, out[-4000:]
    assert "kwarp run: stopped waiting: task i0-m0 is held by " + holder + " (lease epoch 2" in " ".join(out.split())
    assert "Nothing was taken over" in out and "run this command again now" in out
    lease = json.loads(leases[0].read_text())
    assert (lease["epoch"], lease["holder"]) == (2, holder)  # the dead holder's still: not taken over
    first_log = (root / second.key / "logs" / "i0-m0.log").read_text()
    starts = [ln for ln in first_log.splitlines() if ln.startswith("=== ")]
    assert len(starts) == 1 and "attempt 0: kwarp train" in starts[0]  # started once, never again
    assert not open_store(str(root)).has_checkpoint(layout.member_final(second.key, 0, 0))
