"""A test's view of the processes it started and their children, read from /proc (Linux).

Tests that kill a process tree at a chosen point use these to make the point exact: freeze the tree
(SIGSTOP), look at what it has written, and only then kill it, so nothing moves between the look and the
kill however fast or loaded the machine; and to wait until the killed processes are gone rather than
sleep for a guessed time.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children (torchrun starts its trainers in sessions
    of their own, so a process group would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def state(pid: int) -> str:
    """The process's state letter (R, S, T for stopped, Z for a zombie); Z also once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def send(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def freeze(root: int) -> list[int]:
    """SIGSTOP `root` and everything below it; returns the frozen tree, root first. The tree is listed again
    once the first listing is stopped: a parent stopped can start no child, but it may have started one
    between the listing and its stop."""
    tree = [root, *descendants(root)]
    send(tree, signal.SIGSTOP)
    while (more := [p for p in descendants(root) if p not in tree]):
        send(more, signal.SIGSTOP)
        tree += more
    # A signal is only queued by kill(): a process running on another core stops a moment later.
    deadline = time.monotonic() + 30
    while (running := [p for p in tree if state(p) not in ("T", "Z")]):
        assert time.monotonic() < deadline, f"processes not stopped after 30 s: {running}"
        time.sleep(0.01)
    return tree


def wait_gone(pids: Iterable[int], timeout: float) -> None:
    """Until every process in `pids` has ended (exited or a zombie its parent has not reaped yet)."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if state(p) != "Z"]):
        assert time.monotonic() < deadline, f"processes still running after {timeout:.0f} s: {left}"
        time.sleep(0.05)


def pending(pid: int, sig: signal.Signals) -> bool:
    """Whether `sig` was sent to the process and not delivered yet (as to a stopped one)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    masks = [int(line.split()[1], 16) for line in lines if line.startswith(("ShdPnd:", "SigPnd:"))]
    return any(mask >> (sig - 1) & 1 for mask in masks)
