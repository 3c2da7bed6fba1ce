"""Progress and ETA from members' metrics (kwarp.core.eta), and the operator's bounded-rate reads of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kwarp.core.eta import StepLog, read_step_log, run_progress
from kwarp.core.plan import Task
from kwarp.core.spec import parse
from kwarp.operator.progress import ProgressTracker
from kwarp.store import layout, open_store

from .test_spec import doc


def rows(*steps: tuple[int, float], reward: float = 0.5, kl: float = 0.1) -> bytes:
    return "".join(json.dumps({"step": s, "reward": reward + s / 100, "kl_anchor": kl * s, "time": t}) + "\n"
                   for s, t in steps).encode()  # fmt: skip


@pytest.mark.parametrize(("data", "want"), [
    (None, StepLog()),
    (b"", StepLog()),
    (rows((1, 100.0)), StepLog(step=1, reward=0.51, kl=0.1, rate=None)),  # one row: no rate yet
    (rows((1, 100.0), (2, 102.0), (3, 104.0)), StepLog(step=3, reward=0.53, kl=pytest.approx(0.3), rate=0.5)),
    # an evaluation row and a torn last line (an upload in progress) are skipped
    (rows((1, 10.0), (2, 11.0)) + b'{"eval": {"reward": 1}}\n{"step": 3, "rew', StepLog(step=2, reward=0.52, kl=0.2, rate=1.0)),
    # rows without a time give a step but no rate
    (b'{"step": 5, "reward": 1.0}\n{"step": 6, "reward": 2.0}\n', StepLog(step=6, reward=2.0, kl=None, rate=None)),
])  # fmt: skip
def test_a_member_log_gives_its_step_reward_kl_and_rate(data: bytes | None, want: StepLog) -> None:
    assert read_step_log(data) == want


def test_the_rate_comes_from_the_latest_rows_so_a_pause_drops_out() -> None:
    # 10 steps at 1 step/s, a 1000 s suspension, then 60 steps at 2 steps/s: only the latest 50 rows count.
    early = [(s, float(s)) for s in range(1, 11)]
    late = [(10 + k, 1010.0 + k / 2) for k in range(1, 61)]
    assert read_step_log(rows(*early, *late)).rate == pytest.approx(2.0)


def spec(**patch: object):
    return parse({**doc(**{"spec.warp": {"iterations": 2, "policies": 2, "steps": [10, 20]}, **patch}),
                  "metadata": {"name": "r"}}).spec  # fmt: skip


def test_run_progress_counts_done_members_in_full_and_the_slowest_member_per_iteration() -> None:
    s = spec()
    logs = {(0, 0): StepLog(step=4, rate=1.0), (0, 1): StepLog(step=2, rate=3.0)}
    p = run_progress(s, frozenset({Task.prepare()}), logs)
    assert (p.steps_done, p.steps_total, p.percent) == (6, 60, 10.0)
    # median rate 2 steps/s; iteration 0 waits for its slowest member (8 steps left), then 20 steps.
    assert p.steps_per_second == 2.0 and p.remaining_seconds == pytest.approx((8 + 20) / 2.0)

    done = frozenset({Task.prepare(), Task.train(0, 0), Task.train(0, 1), Task.merge(0)})
    p = run_progress(s, done, {(1, 0): StepLog(step=5, rate=0.5), (1, 1): StepLog(step=15, rate=0.5)})
    assert (p.steps_done, p.percent, p.remaining_seconds) == (20 + 20, 66.7, pytest.approx(15 / 0.5))


def test_without_a_measured_rate_there_is_no_eta_and_a_finished_run_has_none_left() -> None:
    s = spec()
    assert run_progress(s, frozenset(), {}).remaining_seconds is None
    assert run_progress(s, frozenset(), {(0, 0): StepLog(step=3)}).remaining_seconds is None
    every = frozenset(Task.train(i, m) for i in range(2) for m in range(2))
    done = run_progress(s, every, {})
    assert (done.percent, done.remaining_seconds) == (100.0, 0.0)


def test_the_tracker_reads_the_store_at_a_bounded_rate(tmp_path: Path) -> None:
    """A running member's log is read again only when the interval passed or a task completed."""
    store = open_store(str(tmp_path))
    s = spec()
    store.put_bytes(layout.member_log("r", 0, 0), rows((1, 0.0), (2, 1.0)))
    clock = [0.0]
    tracker = ProgressTracker(30.0, wall=lambda: 1_000_000.0 + clock[0], monotonic=lambda: clock[0])
    key, active, done = ("uid", str(tmp_path)), [Task.train(0, 0), Task.train(0, 1)], frozenset({Task.prepare()})

    first = tracker.view(key, store, s, "r", done, active)
    assert first.logs[(0, 0)].step == 2 and first.logs[(0, 1)] == StepLog() and tracker.reads == 2
    store.put_bytes(layout.member_log("r", 0, 0), rows((1, 0.0), (2, 1.0), (3, 2.0)))
    clock[0] = 29.0
    assert tracker.view(key, store, s, "r", done, active) is first and tracker.reads == 2  # not due: as read
    clock[0] = 30.0
    due = tracker.view(key, store, s, "r", done, active)
    assert due.logs[(0, 0)].step == 3 and tracker.reads == 4 and due.read_at == 1_000_030.0
    clock[0] = 31.0  # a task completed: read at once (only the members still running)
    after = tracker.view(key, store, s, "r", done | {Task.train(0, 0)}, [Task.train(0, 1)])
    assert tracker.reads == 5 and after.logs[(0, 0)].step == 3 and after.run.steps_done == 10
