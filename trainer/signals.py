"""SIGTERM: the trainer saves its state at the next step boundary, then exits so the next pod resumes.

Kubernetes sends SIGTERM when it evicts, preempts or deletes a pod (a spot node's reclaim notice gives
30-120 s), then SIGKILL after the pod's terminationGracePeriodSeconds. Python's default for SIGTERM is
to die at once, losing every step since the last checkpointInterval. The handler only sets a flag:
the state is consistent only between steps (an optimiser step cut in half would be saved as a mix of
two steps), so the loop finishes the step it is in, saves, and raises `Terminated`. The grace period
must therefore cover one step plus one save; the Jobs' trainer default is TRAINER_GRACE_SECONDS.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Terminated(Exception):
    """SIGTERM arrived; the state of `step` completed steps is saved (the next run resumes there)."""

    def __init__(self, step: int, steps: int, saved: bool):
        self.step, self.steps, self.saved = step, steps, saved
        where = f"state saved at step {step}/{steps}" if saved else f"nothing new to save (step {step}/{steps})"
        super().__init__(f"SIGTERM: {where}; the next run of this member resumes there")


class StopRequest:
    """Set by SIGTERM while `installed()` holds; read by the training loop at step boundaries."""

    def __init__(self) -> None:
        self.signalled = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGTERM for the duration (main thread only: Python installs handlers there alone)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def agreed(self, accelerator: Any) -> bool:
        """True if any process was signalled: all processes stop at the same step (a collective per step
        only when there are several processes)."""
        if accelerator.num_processes == 1:
            return self.signalled
        flag = torch.tensor(float(self.signalled), device=accelerator.device)
        return float(accelerator.reduce(flag, reduction="sum")) > 0
