"""tests/kube.py's polls: a predicate that reads a field not written yet waits instead of failing.

On a fast machine a poll can read a status between two writes of the operator (a member listed before it
has a Job, a condition not set yet): `m["job"]` then raises KeyError. That is "not yet", as it would be
on a slow machine whose first poll comes later; a field that never appears still fails the wait, and
the failure names what the predicate raised.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import wait_for, wait_value


def appears_after(polls: int, value: dict[str, Any]) -> Any:
    """A status as polled: empty for the first `polls` reads, then `value`."""
    reads = iter([{}] * polls + [value])
    return lambda: next(reads, value)


def test_a_predicate_reading_a_field_not_written_yet_waits_for_it() -> None:
    status = appears_after(3, {"members": [{"member": 0, "job": "demo-i0-members"}]})
    assert wait_for(lambda: status()["members"][0]["job"], 30, interval=0.001) == "demo-i0-members"


@pytest.mark.parametrize("partial, predicate", [
    ({"members": [{"member": 0, "state": "Pending"}]}, lambda st: st["members"][0]["job"] == "j"),  # KeyError
    ({"members": []}, lambda st: st["members"][0]["job"] == "j"),  # IndexError
    ({"conditions": None}, lambda st: st["conditions"][0]["status"] == "True"),  # TypeError: None[0]
    ({"observedGeneration": None}, lambda st: st["observedGeneration"] >= 2),  # TypeError: None >= 2
])  # fmt: skip
def test_wait_value_waits_through_each_kind_of_partial_read(partial: dict[str, Any], predicate: Any) -> None:
    done = {"members": [{"member": 0, "job": "j"}], "conditions": [{"status": "True"}], "observedGeneration": 2}
    reads = iter([partial] * 3)
    assert wait_value(lambda: next(reads, done), predicate, 30) is done


def test_a_field_that_never_appears_times_out_naming_what_the_predicate_raised() -> None:
    with pytest.raises(AssertionError) as failure:
        wait_value(lambda: {"members": [{"member": 0}]}, lambda st: st["members"][0]["job"], 0.2,
                   message="member 0's Job")  # fmt: skip
    text = str(failure.value)
    assert text.startswith("timed out after 0s waiting for member 0's Job; the predicate raised ")
    assert text.endswith("time(s), last: KeyError('job')")
    assert isinstance(failure.value.__cause__, KeyError)  # its traceback shows where


def test_a_wait_that_never_raised_times_out_as_before() -> None:
    with pytest.raises(AssertionError, match=r"^timed out after 0s waiting for nothing$") as failure:
        wait_for(lambda: False, 0.1, message=lambda: "nothing")
    assert failure.value.__cause__ is None


def test_a_message_that_cannot_be_built_still_reports_the_timeout() -> None:
    with pytest.raises(AssertionError, match=r"waiting for a condition \(its message raised KeyError\('phase'\)\)"):
        wait_for(lambda: False, 0.1, message=lambda: f"phase {dict()['phase']}")


def test_any_other_exception_fails_the_wait_at_once() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("the API server answered 500")

    with pytest.raises(RuntimeError, match="answered 500"):
        wait_for(broken, 30)
    assert len(calls) == 1
