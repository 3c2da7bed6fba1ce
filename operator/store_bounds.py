"""How long the operator may wait for a run's store: a few seconds per reconcile, never minutes.

The trainer and merger wait for the store (their defaults retry for up to five minutes: a MinIO
restart must not cost a member its work). The operator must not: a reconcile holds one of kopf's
handler threads, and suspend, resume and delete must act while the store is down. So the operator's
S3 stores use tighter timeouts and one retry, and share one circuit breaker per endpoint:

    connect timeout   2 s      (a closed port fails at once; a black-holed one costs this)
    read timeout      3 s      (the operator reads manifests, listings and small JSON documents)
    attempts          2        (one retry, 0.1-0.2 s later), no retry begun after 3 s
    breaker           open 10 s after an operation gives up, doubling to 120 s while probes fail

A reconcile of a run whose store is black-holed therefore waits for one bounded operation (a timed-out
read is not retried; a refused or timed-out connection is, once: at most about 6 s), and not at all
while the breaker is open: the operations after the first fail at once.
"""

from __future__ import annotations

import dataclasses
import threading

from kwarp.store.breaker import CircuitBreaker
from kwarp.store.s3_config import RetryPolicy, S3Config

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 3.0
RETRY = RetryPolicy(max_attempts=2, base_delay_s=0.2, max_delay_s=1.0, deadline_s=3.0)
BREAKER_COOLDOWN_S = 10.0
BREAKER_MAX_COOLDOWN_S = 120.0


def bounded(config: S3Config) -> S3Config:
    """The operator's version of a run's S3 settings: same endpoint and TLS, short waits, one retry."""
    return dataclasses.replace(
        config,
        retry=RETRY,
        connect_timeout_s=min(config.connect_timeout_s, CONNECT_TIMEOUT_S),
        read_timeout_s=min(config.read_timeout_s, READ_TIMEOUT_S),
        concurrency=min(config.concurrency, 2),  # listings and small objects: no parallel transfers
    )


class Breakers:
    """One circuit breaker per S3 endpoint (scheme and host:port), shared by every run that uses it."""

    def __init__(self, cooldown_s: float = BREAKER_COOLDOWN_S, max_cooldown_s: float = BREAKER_MAX_COOLDOWN_S):
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def of(self, config: S3Config) -> CircuitBreaker:
        name = f"{'https' if config.secure else 'http'}://{config.endpoint}"
        with self._lock:
            if name not in self._breakers:
                self._breakers[name] = CircuitBreaker(
                    name, cooldown_s=self.cooldown_s, max_cooldown_s=max(self.cooldown_s, self.max_cooldown_s)
                )
            return self._breakers[name]
