"""The loop of a test-side controller (the Job controller stand-in, tests/kube_jobs.py; the Kueue stand-in,
tests/kueue.py) in a daemon thread: started by `with`, told to stop and joined on exit."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Subclasses write `_run`, a loop that returns soon after `self._stop` is set."""

    def __init__(self, thread_name: str) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_name = thread_name

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)  # a loop blocked in a call longer than this is left behind (daemon)
