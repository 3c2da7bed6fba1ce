"""Serialisation per run: no two reconciles of one WarpRun at once, and the events that arrive during one
folded into a single further pass."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class KeyedSerializer:
    """Runs `fn` for a key with no two runs of the same key at once. A call that arrives while the key
    is busy returns at once and makes the running call go round once more: any number of events
    during a reconcile cost one more reconcile, not one each, and no handler thread waits on a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[Any, bool] = {}  # key -> another pass requested

    def run(self, key: Any, fn: Callable[[], Any]) -> bool:
        """True if this call ran fn (at least once), False if it was folded into a running call."""
        with self._lock:
            if key in self._busy:
                self._busy[key] = True
                return False
            self._busy[key] = False
        try:
            while True:
                fn()
                with self._lock:
                    if not self._busy[key]:
                        return True
                    self._busy[key] = False
        finally:
            with self._lock:
                self._busy.pop(key, None)
