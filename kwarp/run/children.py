"""The embedded runner's child processes: what it keeps of each, how it reads their output, and how
their attempts are recorded when a runner dies.

A child is `python -m kwarp <task>`, started in its own process group and killed with the runner
(PR_SET_PDEATHSIG). Its output goes to `<logs>/<task>.log`; lines starting with PROGRESS_PREFIX
(trainer/train.py writes them) are its progress, the others its last words for a failure message.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kwarp.core.plan import Task

PROGRESS_PREFIX = "KWARP_PROGRESS "  # the trainer's (trainer/train.py); kept equal by tests/test_local_units.py


@dataclass
class Proc:
    task: Task
    attempt: int
    popen: subprocess.Popen[str]
    log_path: Path
    started: float
    progress: dict[str, Any] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    reader: threading.Thread | None = None


def close_orphaned_attempts(timeline: list[dict[str, Any]], log_dir: Path) -> int:
    """Mark the attempts a previous runner left open as interrupted; returns how many.

    A runner killed without clean-up (SIGKILL, a lost machine) leaves its attempts "running" in
    runner.json, and its children die with it (PR_SET_PDEATHSIG). Only the runner holding the run's
    lock calls this, so no open attempt can belong to a live runner. The end is the last time the
    attempt's log was written (the closest measured bound), else its start.
    """
    closed = 0
    for entry in timeline:
        if entry.get("end") is not None or entry.get("status") != "running":
            continue
        log = log_dir / f"{entry.get('task')}.log"
        try:
            end = max(log.stat().st_mtime, float(entry.get("start") or 0.0))
        except OSError:
            end = entry.get("start")
        entry.update(end=end, status="interrupted")
        closed += 1
    return closed


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die when the runner dies
    except OSError:
        pass


def pump_output(proc: Proc, log: TextIO, metrics: Any = None) -> None:
    """Copy a child's output to its log file; keep progress records and the last lines."""
    assert proc.popen.stdout is not None
    for line in proc.popen.stdout:
        log.write(line)
        log.flush()
        stripped = line.rstrip("\n")
        if stripped.startswith(PROGRESS_PREFIX):
            try:
                proc.progress = json.loads(stripped[len(PROGRESS_PREFIX) :])
            except ValueError:
                continue  # a torn line: the next one carries the same fields
            if metrics is not None and proc.task.kind == "train":
                metrics.record_step(proc.task.iteration, proc.task.member, proc.progress)
        elif stripped.strip():
            proc.tail.append(stripped)
    log.close()


def failure_reason(tail: list[str], returncode: int) -> str:
    """The most useful line of a failed task's output: its own error message, else the last lines."""
    for line in reversed(tail):
        if ": error: " in line or line.startswith(("Error", "UserError", "RuntimeError", "ValueError")):
            return f"{line.strip()} (exit code {returncode})"
    last = " | ".join(s.strip() for s in tail[-3:]) or "no output"
    if returncode < 0:
        return f"killed by signal {-returncode}; last output: {last}"
    return f"exit code {returncode}; last output: {last}"
