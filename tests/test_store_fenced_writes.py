"""A fenced small object (metrics.jsonl, heartbeat.json, merge.json, eval.json, export.json) is never written
by an older attempt over a newer attempt's, even when the older one stalls between its lease check and its
write: the check and the write are one compare-and-swap on each store.

The stall is made exact, not timed. On S3 the older attempt's PUT is held in a proxy (a network partition
after its lease check); on file:// the older attempt's read of its lease is held (its store sees the run
folder through links, its lease through a FIFO the test answers), while a newer attempt claims the task and
writes the object. Then the older attempt goes on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from kwarp.store import FileStore, open_store
from kwarp.store.base import FencedOut
from kwarp.store.fencing import claim
from tests.s3server import FaultyProxy, S3Server, s3_server

s3 = pytest.fixture(scope="module")(s3_server)

RUN = "ns/r/uid"
LEASE = f"{RUN}/leases/i0-eval.json"
OBJECT = f"{RUN}/iter-0/eval.json"


class Attempt(threading.Thread):
    """One write of an attempt on a thread of its own: its outcome (None or the exception) once joined."""

    def __init__(self, write) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.write, self.error, self.done = write, None, False

    def run(self) -> None:
        try:
            self.write()
        except Exception as err:  # noqa: BLE001 - the test looks at it
            self.error = err
        self.done = True


def test_an_older_attempts_put_held_past_a_newer_attempts_write_is_refused_on_s3(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.create_bucket()
    monkeypatch.setenv("KWARP_S3_READ_TIMEOUT_S", "3600")  # the held PUT is not retried past the hold
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    direct = open_store(f"s3://{bucket}/runs")
    older_fence = claim(direct, LEASE, "pod older")
    direct.put_json(OBJECT, {"by": "older", "n": 0}, fence=older_fence)  # a first write: the object exists
    with FaultyProxy(s3.port) as proxy:
        for name, value in s3.env(proxy.endpoint).items():
            monkeypatch.setenv(name, value)
        older_store = open_store(f"s3://{bucket}/runs")
        held = proxy.hold(rb"PUT /" + bucket.encode() + rb"/runs/" + OBJECT.encode() + rb" ")
        older = Attempt(lambda: older_store.put_json(OBJECT, {"by": "older", "n": 1}, fence=older_fence))
        older.start()
        try:
            assert held.reached.wait(120), "the older attempt's PUT never came"  # it has checked its lease
            newer_fence = claim(direct, LEASE, "pod newer")
            direct.put_json(OBJECT, {"by": "newer"}, fence=newer_fence)
        finally:
            held.release()
            older.join(120)
    assert older.done and isinstance(older.error, FencedOut), older.error
    assert "a newer attempt of task i0-eval holds the lease (epoch 2, holder pod newer" in str(older.error)
    assert direct.get_json(OBJECT) == {"by": "newer"}
    # The newer attempt writes on; an unfenced write (a tool, the runner's own files) is unconditional.
    direct.put_json(OBJECT, {"by": "newer", "n": 2}, fence=newer_fence)
    direct.put_json(f"{RUN}/runner.json", {"tasks": []})
    assert direct.get_json(OBJECT) == {"by": "newer", "n": 2} and direct.get_json(f"{RUN}/runner.json") == {"tasks": []}


def _blocked_on_flock(path: Path) -> bool:
    """Whether some process waits for a flock on `path` (/proc/locks lists waiters with `->`)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any("->" in line and "FLOCK" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_an_older_attempt_stalled_in_its_lease_check_never_lands_over_a_newer_attempts_write_on_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    older_fence = claim(store, LEASE, "host older")
    store.put_json(OBJECT, {"by": "older", "n": 0}, fence=older_fence)
    lease_doc = (root / LEASE).read_bytes()  # the lease as the older attempt will read it: still its own

    # The older attempt's view of the store: the run's folders are links into it, its lease is a FIFO.
    view = tmp_path / "older-view"
    (view / RUN / "leases").mkdir(parents=True)
    (view / RUN / "iter-0").symlink_to(root / RUN / "iter-0")
    os.mkfifo(view / LEASE)
    older_store = FileStore(view)
    older = Attempt(lambda: older_store.put_json(OBJECT, {"by": "older", "n": 1}, fence=older_fence))
    older.start()
    with open(view / LEASE, "wb") as lease_pipe:  # opens once the older attempt reads its lease: its check
        newer_fence = claim(store, LEASE, "host newer")
        newer = Attempt(lambda: store.put_json(OBJECT, {"by": "newer"}, fence=newer_fence))
        newer.start()
        # The newer write has landed, or waits for the object's lock, which the older attempt holds.
        lock = root / RUN / "iter-0" / ".eval.json.lock"
        deadline = time.monotonic() + 120
        while not (newer.done or (lock.exists() and _blocked_on_flock(lock))):
            assert time.monotonic() < deadline, "the newer write neither landed nor waited"
            time.sleep(0.01)
        lease_pipe.write(lease_doc)  # the older attempt's check reads its own lease: it read before the claim
    older.join(120)
    newer.join(120)
    assert older.done and newer.done and newer.error is None, (older.error, newer.error)
    assert json.loads((root / OBJECT).read_bytes()) == {"by": "newer"}  # the newer attempt's, last
    # From now on the older attempt is refused before it writes.
    with pytest.raises(FencedOut, match="epoch 2, holder host newer"):
        store.put_json(OBJECT, {"by": "older", "n": 2}, fence=older_fence)
    assert json.loads((root / OBJECT).read_bytes()) == {"by": "newer"}
