"""The store's circuit breaker, state by state, on a clock the test moves (no sleeping, no network)."""

from __future__ import annotations

import pytest

from kwarp.store.base import StoreError, StoreUnreachable
from kwarp.store.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def down() -> None:
    raise StoreUnreachable("cannot reach S3 endpoint minio:9000 after 2 attempts")


def answered_no() -> None:
    raise StoreError("bucket 'x' does not exist")


def test_closed_passes_calls_and_their_results() -> None:
    breaker = CircuitBreaker("http://minio:9000", clock=Clock())
    assert breaker.call("GET a", lambda: 42) == 42
    with pytest.raises(StoreError):
        breaker.call("GET a", answered_no)  # the endpoint answered: not a reason to stop asking it
    assert breaker.state == "closed"


def test_an_unreachable_endpoint_opens_the_circuit_and_calls_fail_without_running() -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://minio:9000", cooldown_s=10, clock=clock)
    with pytest.raises(StoreUnreachable):
        breaker.call("GET a", down)
    assert breaker.state == "open"
    ran = []
    with pytest.raises(CircuitOpen, match=r"GET b: not tried, S3 endpoint http://minio:9000 was unreachable .* next try in 10s"):
        breaker.call("GET b", lambda: ran.append(1))
    assert ran == [] and breaker.rejected == 1
    assert isinstance(CircuitOpen("x"), StoreUnreachable)  # callers handle both alike


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("e", cooldown_s=10, clock=clock)
    with pytest.raises(StoreUnreachable):
        breaker.call("GET a", down)
    clock.now += 10
    assert breaker.state == "half-open"
    breaker.before("probe")  # the one probe is let through...
    with pytest.raises(CircuitOpen):
        breaker.before("another caller")  # ...and everyone else still fails fast meanwhile
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.call("GET a", lambda: "ok") == "ok"


def test_failed_probes_double_the_cooldown_up_to_the_cap_and_success_resets_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker("e", cooldown_s=10, max_cooldown_s=30, clock=clock)
    waits = []
    for _ in range(4):
        with pytest.raises(StoreUnreachable):
            breaker.call("GET a", down)
        opened = clock.now
        while breaker.state == "open":
            clock.now += 1
        waits.append(clock.now - opened)
    assert waits == [10, 20, 30, 30]
    breaker.call("GET a", lambda: None)
    with pytest.raises(StoreUnreachable):
        breaker.call("GET a", down)
    opened = clock.now
    while breaker.state == "open":
        clock.now += 1
    assert clock.now - opened == 10
