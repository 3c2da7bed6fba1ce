"""A circuit breaker for a store endpoint: once it is found unreachable, stop asking it for a while.

    closed     calls go through; an operation that exhausts its (bounded) retries on network faults,
               timeouts or 5xx opens the circuit
    open       calls fail at once with StoreUnreachable, touching no socket, for `cooldown_s`
               (doubled after each failed probe, up to `max_cooldown_s`)
    half-open  after the cooldown one call probes the endpoint (the others still fail at once);
               its success closes the circuit, its failure opens it again

The operator gives each S3 endpoint one breaker, shared by the reconciles of every run on it: a down
MinIO then costs one bounded probe per cooldown, not a timeout per store call per run per event, and
kopf's handler threads stay free. The trainer and merger do not use one (they wait for the store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kwarp.store.base import StoreUnreachable

T = TypeVar("T")


class CircuitOpen(StoreUnreachable):
    """The endpoint was unreachable moments ago: this call was not even tried."""


class CircuitBreaker:
    def __init__(self, name: str, *, cooldown_s: float = 10.0, max_cooldown_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.name = name
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._next_cooldown = cooldown_s
        self.last_error = ""
        self.rejected = 0  # calls refused while open (tests and logs read it)

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self.clock() >= self._open_until else "open"

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """Run one store operation (its own bounded retries included) through the breaker."""
        self.before(what)
        try:
            result = operation()
        except StoreUnreachable as err:
            self.failed(str(err))
            raise
        except BaseException:
            self.succeeded()  # the endpoint answered (NoSuchKey, NoSuchBucket, a bad checksum, ...)
            raise
        self.succeeded()
        return result

    def before(self, what: str) -> None:
        """Raise CircuitOpen unless this call may go to the endpoint (closed, or the one half-open probe)."""
        with self._lock:
            if self._open_until is None:
                return
            now = self.clock()
            if now >= self._open_until and not self._probing:
                self._probing = True
                return
            self.rejected += 1
            wait = max(0.0, self._open_until - now)
            error = self.last_error
        raise CircuitOpen(
            f"{what}: not tried, S3 endpoint {self.name} was unreachable moments ago ({error}); "
            f"next try in {wait:.0f}s"
        )

    def succeeded(self) -> None:
        """The endpoint answered (even with an error of its own, such as NoSuchKey): close the circuit."""
        with self._lock:
            self._open_until = None
            self._probing = False
            self._next_cooldown = self.cooldown_s

    def failed(self, error: str) -> None:
        """An operation gave up on the endpoint: open the circuit (again, for longer after a failed probe)."""
        with self._lock:
            cooldown = self._next_cooldown
            self._next_cooldown = min(self.max_cooldown_s, cooldown * 2)
            self._open_until = self.clock() + cooldown
            self._probing = False
            self.last_error = error[:300]
