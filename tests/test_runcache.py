"""The operator's cache of WarpRuns (operator/runcache.py): what a reconcile reads instead of a GET."""

from __future__ import annotations

from typing import Any

from kwarp.operator.runcache import RunCache


def run(rv: int, uid: str = "u1", name: str = "demo", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": str(rv)},
            "status": status}  # fmt: skip


def test_a_newer_version_wins_and_an_older_one_arriving_late_is_ignored() -> None:
    cache = RunCache()
    assert cache.put(run(5, phase="Pending")) is True  # first seen
    assert cache.put(run(7, phase="Training")) is False
    cache.put(run(6, phase="Pending"))  # a watch event older than the PATCH answer already put
    assert cache.get("default", "demo") == run(7, phase="Training")


def test_a_run_of_the_same_name_with_another_uid_replaces_it() -> None:
    cache = RunCache()
    cache.put(run(9, uid="old"))
    cache.put(run(3, uid="new"))  # recreated: its versions are not comparable with the old run's
    assert cache.get("default", "demo")["metadata"]["uid"] == "new"  # type: ignore[index]


def test_a_deleted_run_is_not_brought_back_by_a_late_answer() -> None:
    cache = RunCache(kept=2)
    cache.put(run(5))
    cache.deleted(run(8))
    assert cache.get("default", "demo") is None
    assert cache.put(run(7)) is False  # e.g. the answer to a status PATCH sent before the deletion
    assert cache.get("default", "demo") is None
    cache.put(run(1, uid="u2"))  # the same name, created again: a new run
    assert cache.get("default", "demo")["metadata"]["uid"] == "u2"  # type: ignore[index]
    for uid in ("u3", "u4"):  # tombstones are bounded (kept=2): the oldest, u1's, goes
        cache.deleted(run(1, uid=uid, name=uid))
    cache.put(run(9))
    assert cache.get("default", "demo")["metadata"]["uid"] == "u1"  # type: ignore[index]
