"""Store ownership: the pure decisions (kwarp.core.ownership), table-driven, and the records in a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwarp.core.owners import claim, read_owners
from kwarp.core.ownership import (
    OWNED_BY_ANOTHER_RUN,
    SPEC_DIGEST_MISMATCH,
    UNREADABLE_RECORD,
    Owner,
    decide,
    local_uid,
    may_delete,
    newest,
    run_key,
    spec_digest,
    storage_allowed,
    store_key,
)
from kwarp.core.spec import parse
from kwarp.store import FileStore

from .test_spec import doc

ME = Owner("team-a", "demo", "uid-1", "sha256:aaa", "operator", "2026-01-01T00:00:00Z")


def record(**changes: str) -> dict[str, str]:
    return {**ME.to_json(), **changes}


@pytest.mark.parametrize(("stored", "action", "reason"), [
    (None, "claim", ""),
    (record(), "own", ""),
    (record(created="later"), "own", ""),  # when it was written does not matter
    (record(uid="uid-2"), "conflict", OWNED_BY_ANOTHER_RUN),  # a re-created run of the same name
    (record(namespace="team-b"), "conflict", OWNED_BY_ANOTHER_RUN),  # the same name in another namespace
    (record(name="other"), "conflict", OWNED_BY_ANOTHER_RUN),
    (record(specDigest="sha256:bbb"), "conflict", SPEC_DIGEST_MISMATCH),  # this run, another spec
    ({"hello": "world"}, "conflict", UNREADABLE_RECORD),
    ([1, 2], "conflict", UNREADABLE_RECORD),
    (record(executor="somebody"), "conflict", UNREADABLE_RECORD),
])  # fmt: skip
def test_decide_who_may_write_a_run_folder(stored: object, action: str, reason: str) -> None:
    verdict = decide(stored, ME, where="s3://b/team-a/demo/uid-1")
    assert (verdict.action, verdict.reason) == (action, reason)
    assert verdict.allowed == (action != "conflict")
    if action == "conflict":
        assert "s3://b/team-a/demo/uid-1" in verdict.message


@pytest.mark.parametrize(("stored", "allowed"), [
    (None, True),  # the folder's key holds our uid: only our tasks wrote there
    (record(), True),
    (record(specDigest="sha256:bbb"), True),  # still this run's data
    (record(uid="uid-2"), False),
    (record(namespace="team-b"), False),
    ("garbage", False),
])  # fmt: skip
def test_may_delete_only_its_own_folder(stored: object, allowed: bool) -> None:
    assert may_delete(stored, ME, where="x").allowed is allowed


@pytest.mark.parametrize("bad", [("", "demo", "u"), ("ns", "a/b", "u"), ("ns", "demo", ".."), ("ns", ".", "u")])
def test_run_key_refuses_what_would_leave_the_folder(bad: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="cannot name a folder"):
        run_key(*bad)


def test_store_key_of_a_document() -> None:
    run = parse(doc())
    assert store_key(run) == run.name  # a document without uid: a task command run by hand
    with_uid = parse(doc(**{"metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1"}}))
    assert store_key(with_uid) == "team-a/demo/u-1"
    local = parse(doc(**{"metadata": {"name": "demo", "uid": "u-1"}}))
    assert store_key(local) == "local/demo/u-1"


def test_the_spec_digest_ignores_what_may_change_and_sees_the_rest() -> None:
    base = parse(doc()).spec
    same = [doc(**{"spec.suspend": True}), doc(**{"spec.failurePolicy": {"maxRetries": 7}}),
            doc(**{"spec.cleanup": "Delete"}), doc(**{"spec.storage": {"url": "/elsewhere"}})]  # fmt: skip
    for d in same:
        assert spec_digest(parse(d).spec) == spec_digest(base)
    for d in (doc(**{"spec.warp.beta": 0.5}), doc(**{"spec.policy.location": "s3://models/other"})):
        assert spec_digest(parse(d).spec) != spec_digest(base)
    assert spec_digest(base).startswith("sha256:") and len(spec_digest(base)) == 7 + 64


def test_the_embedded_runner_continues_its_own_record_and_refuses_another_spec() -> None:
    mine = Owner("local", "demo", "u-old", "sha256:aaa", "local", "2026-01-01T00:00:00Z")
    newer = Owner("local", "demo", "u-new", "sha256:aaa", "local", "2026-01-02T00:00:00Z")
    other_spec = Owner("local", "demo", "u-x", "sha256:bbb", "local", "2026-01-03T00:00:00Z")
    cluster = Owner("local", "demo", "u-k", "sha256:aaa", "operator", "2026-01-04T00:00:00Z")
    assert local_uid([], "local", "demo", "sha256:aaa").owner is None
    assert local_uid([mine, newer, other_spec], "local", "demo", "sha256:aaa").owner == newer
    assert local_uid([other_spec], "local", "demo", "sha256:aaa").conflict == other_spec
    choice = local_uid([cluster], "local", "demo", "sha256:aaa")  # an operator's folder is never adopted
    assert (choice.owner, choice.conflict) == (None, None)
    assert newest([mine, newer, cluster], "local", "demo") == cluster
    assert newest([mine, other_spec], "local", "demo", "sha256:aaa") == mine


@pytest.mark.parametrize(("url", "allowed"), [
    ("s3://kwarp/runs", True),
    ("s3://kwarp/runs/team-a", True),
    ("s3://kwarp/runs/", True),
    ("s3://kwarp/runs-evil", False),  # whole path segments, not string prefixes
    ("s3://kwarp", False),
    ("s3://kwarp/models", False),
    ("s3://kwarp/runs/../models", False),  # no way out of an allowed prefix
    ("s3://other/runs", False),
    ("/data/kwarp/runs/a", True),
    ("file:///data/kwarp/runs/a", True),
    ("/data/kwarp/runs/../../etc", False),
    ("/data/kwarp", False),
    ("relative/path", False),
])  # fmt: skip
def test_storage_allowed_prefixes(url: str, allowed: bool) -> None:
    prefixes = ["s3://kwarp/runs", "/data/kwarp/runs"]
    assert storage_allowed(url, prefixes) is allowed
    assert storage_allowed(url, []) is True  # no setting: anywhere


def test_claim_writes_the_record_first_and_reads_it_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert claim(store, ME, "here").action == "own"
    assert store.get_json("team-a/demo/uid-1/OWNER.json") == ME.to_json()
    assert claim(store, ME, "here").action == "own"  # idempotent
    thief = Owner("team-a", "demo", "uid-1", "sha256:zzz", "operator")
    assert claim(store, thief, "here").reason == SPEC_DIGEST_MISMATCH
    assert store.get_json("team-a/demo/uid-1/OWNER.json") == ME.to_json()  # unchanged
    store.put_json("team-a/demo/uid-2/OWNER.json", record(uid="uid-2"))
    store.put_json("team-a/demo/broken/OWNER.json", {"no": "record"})
    assert sorted(o.uid for o in read_owners(store, "team-a", "demo")) == ["uid-1", "uid-2"]
