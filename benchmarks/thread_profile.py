"""Where a process of the benchmark spends its CPU: cProfile on every thread, timed by each thread's CPU clock.

`benchmarks/operator.py --profile-emulator DIR` runs the API server's and the Job controller's processes
under it and writes `api_server.pstats` and `job_controller.pstats` into DIR (read them with `python -m
pstats`). A sampling profiler from outside (py-spy) counts a thread that is runnable but waiting for a core
as busy, so on a loaded 2-core machine it puts half the API server's samples in the socket write after
which the scheduler hands the core to the reader; the thread's CPU clock (`time.thread_time`) counts only
what the thread ran. cProfile's own cost per call inflates call-heavy code against C functions (json,
deepcopy): read it for where, not for how much.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any


class ThreadProfiles:
    """A CPU-time cProfile of this thread and of every thread started after `start()`."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def start(self) -> ThreadProfiles:
        threading.setprofile(self._hook)  # each new thread calls it first: it swaps in a profile of its own
        self._enable()
        return self

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        self._enable()

    def _enable(self) -> None:
        profile = cProfile.Profile(time.thread_time)
        self.profiles.append(profile)  # list.append is atomic: threads starting together do not race
        profile.enable()

    def dump(self, path: Path) -> None:
        """Every thread's profile, summed, as a pstats file (once the process's threads are done)."""
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            stats.add(profile)
        stats.dump_stats(str(path))
