"""Atomic, fenced publishing on both stores: versions beside the current one, one pointer, fencing tokens.

Every test that can runs against the file:// store and against the s3:// store on a real S3 server
(moto over HTTP), since both promise the same: an interrupted publish keeps the previous checkpoint,
writers never mix, a stale attempt cannot publish over a newer one, superseded versions go.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwarp.core.checkpoints import build_manifest
from kwarp.store import FileStore, Store
from kwarp.store.base import FencedOut
from kwarp.store.cache import CheckpointCache
from kwarp.store.fencing import Fence, check, claim
from kwarp.store.s3 import Credentials, RetryPolicy, S3Config, S3Store
from kwarp.store.versions import check_generation, generation_of, new_version, superseded, writer_generation

from .s3server import ACCESS_KEY, SECRET_KEY, FaultyProxy, S3Server, s3_server

s3 = pytest.fixture(scope="module")(s3_server)
KEY = "ns/run/uid/iter-0/member-0/state"
LEASE = "ns/run/uid/leases/i0-m0.json"


def s3_store(endpoint: str, bucket: str, cache: Path) -> S3Store:
    config = S3Config(endpoint=endpoint, secure=False, region="us-east-1", part_size=5 << 20, concurrency=4,
                      retry=RetryPolicy(max_attempts=3, base_delay_s=0.02, max_delay_s=0.2, deadline_s=30))  # fmt: skip
    return S3Store(bucket, "runs", config=config, credentials=Credentials(ACCESS_KEY, SECRET_KEY, source="test"),
                   cache=CheckpointCache(cache))  # fmt: skip


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "file":
        yield FileStore(tmp_path / "store")
    else:
        server: S3Server = request.getfixturevalue("s3")
        yield s3_store(server.endpoint, server.create_bucket(), tmp_path / "cache")


def folder(path: Path, value: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(value * 1000)
    (path / "config.json").write_text('{"n": 1}')
    return path


def content(store: Store, key: str) -> bytes:
    return (store.open_checkpoint(key) / "model.safetensors").read_bytes()[:1]


# ------------------------------------------------------------------------------------ the pure rules


@pytest.mark.parametrize(
    ("versions", "new", "old", "generation", "gone"),
    [
        # the version it replaced goes, and every lower generation (killed or stale uploads)
        (["g0000000002-aaaaaaaa", "g0000000002-bbbbbbbb", "g0000000001-cccccccc"], "g0000000002-bbbbbbbb",
         "g0000000002-aaaaaaaa", 2, ["g0000000001-cccccccc", "g0000000002-aaaaaaaa"]),
        # a newer attempt's upload in flight stays, and so does another upload of the same generation
        (["g0000000003-aaaaaaaa", "g0000000002-bbbbbbbb", "g0000000002-dddddddd"], "g0000000002-bbbbbbbb",
         None, 2, []),
        # names that are no version (foreign, damaged) go
        (["junk", "g0000000001-aaaaaaaa"], "g0000000001-aaaaaaaa", None, 1, ["junk"]),
    ],
)  # fmt: skip
def test_which_versions_are_superseded(versions: list[str], new: str, old: str | None, generation: int,
                                       gone: list[str]) -> None:  # fmt: skip
    assert superseded(versions, new, old, generation) == gone


def test_generations() -> None:
    assert generation_of(new_version(7)) == 7 and generation_of("v1") is None
    assert writer_generation(None, 4) == 4 and writer_generation(9, 4) == 4  # a token is the generation
    assert writer_generation(None, None) == 1 and writer_generation(3, None) == 4  # a copy tool: the next one
    check_generation(None, 1, fenced=True, what="x")
    check_generation(2, 2, fenced=True, what="x")  # the same attempt publishes again
    with pytest.raises(FencedOut, match="a newer attempt \\(generation 3\\).*this attempt \\(generation 2\\)"):
        check_generation(3, 2, fenced=True, what="x")
    with pytest.raises(FencedOut, match="another writer published a newer version"):
        check_generation(3, 2, fenced=False, what="x")


# ------------------------------------------------------------------------------------ both stores


def test_an_interrupted_publish_keeps_the_previous_checkpoint(store: Store, tmp_path: Path) -> None:
    store.put_checkpoint(folder(tmp_path / "a", b"a"), KEY)
    with pytest.raises(RuntimeError, match="killed"), store.write_checkpoint(KEY) as out:
        (out / "model.safetensors").write_bytes(b"b" * 1000)
        raise RuntimeError("killed")
    assert store.has_checkpoint(KEY) and content(store, KEY) == b"a"
    store.verify_checkpoint(KEY)


def test_a_stale_attempt_cannot_publish_over_a_newer_one(store: Store, tmp_path: Path) -> None:
    old = claim(store, LEASE, "pod old")
    store.put_checkpoint(folder(tmp_path / "a", b"a"), KEY, fence=old)
    new = claim(store, LEASE, "pod new")
    assert (old.epoch, new.epoch) == (1, 2)

    # Once the newer attempt started, the older one publishes nothing: no checkpoint, no small object.
    with pytest.raises(FencedOut, match=r"a newer attempt of task i0-m0 holds the lease \(epoch 2, holder pod new.*this attempt \(epoch 1, pod old\) publishes nothing more"):
        store.put_checkpoint(folder(tmp_path / "b", b"b"), KEY, fence=old)
    with pytest.raises(FencedOut):
        store.put_bytes("ns/run/uid/iter-0/member-0/metrics.jsonl", b"{}", fence=old)
    assert content(store, KEY) == b"a"

    store.put_checkpoint(folder(tmp_path / "c", b"c"), KEY, fence=new)
    store.put_checkpoint(folder(tmp_path / "d", b"d"), KEY, fence=new)  # the same attempt, again
    assert content(store, KEY) == b"d"
    # Even with a lease that somehow names the old attempt again, the pointer does not go back.
    forged = Fence(LEASE, 1, "pod old", claim(store, LEASE, "pod old").nonce)
    with pytest.raises(FencedOut):
        store.put_checkpoint(folder(tmp_path / "e", b"e"), KEY, fence=forged)
    assert content(store, KEY) == b"d"
    store.verify_checkpoint(KEY)


def test_a_newer_attempt_that_starts_mid_upload_wins(store: Store, tmp_path: Path) -> None:
    old = claim(store, LEASE)
    with pytest.raises(FencedOut), store.write_checkpoint(KEY, fence=old) as out:
        (out / "model.safetensors").write_bytes(b"a" * 1000)
        claim(store, LEASE)  # a replacement pod starts while this one is still writing
    assert not store.has_checkpoint(KEY)
    assert store.list(KEY) == []  # the refused upload is gone


def test_superseded_versions_are_collected(store: Store, tmp_path: Path) -> None:
    fence = claim(store, LEASE)
    for value in (b"a", b"b", b"c"):
        store.put_checkpoint(folder(tmp_path / value.decode(), value), KEY, fence=fence)
    names = {k.rsplit("/", 1)[1] for k in store.list(KEY)}
    assert names == {"model.safetensors", "config.json", "MANIFEST.json"}
    assert len(store.list(KEY)) == 3  # one version left

    assert store.delete_prefix(KEY) == 3
    assert store.list(KEY) == [] and not store.has_checkpoint(KEY)
    assert store.list("ns/run/uid/leases") == [LEASE]


def test_claims_race_to_distinct_epochs(store: Store) -> None:
    fences: list[Fence] = []
    lock = threading.Lock()

    def take() -> None:
        fence = claim(store, LEASE)
        with lock:
            fences.append(fence)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(f.epoch for f in fences) == [1, 2, 3, 4, 5, 6]
    newest = max(fences, key=lambda f: f.epoch)
    check(store, newest, "x")
    for fence in fences:
        if fence is not newest:
            with pytest.raises(FencedOut):
                check(store, fence, "x")


# ------------------------------------------------------------------------------------ file:// specifics


def test_a_file_checkpoint_is_a_link_to_a_whole_version(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_checkpoint(folder(tmp_path / "a", b"a"), KEY)
    dest = store.path(KEY)
    assert dest.is_symlink() and not os.path.isabs(os.readlink(dest))
    opened = store.open_checkpoint(KEY)
    assert opened.parent == dest.parent / ".state.v" and opened == dest.resolve()
    store.put_checkpoint(folder(tmp_path / "b", b"b"), KEY)
    # A reader keeps the folder it opened; the key names the new version.
    assert (dest / "model.safetensors").read_bytes()[:1] == b"b"
    assert sorted(p.name for p in (dest.parent / ".state.v").iterdir()) == [dest.resolve().name]
    assert store.list(KEY) == [f"{KEY}/{n}" for n in ("MANIFEST.json", "config.json", "model.safetensors")]


def test_a_file_checkpoint_of_the_older_layout_is_replaced_whole(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    old = folder(store.path(KEY), b"a")  # a plain folder at the key, as stores held before versions
    from kwarp.core.checkpoints import write_manifest

    write_manifest(old)
    assert store.has_checkpoint(KEY) and content(store, KEY) == b"a"
    store.put_checkpoint(folder(tmp_path / "b", b"b"), KEY)
    assert store.path(KEY).is_symlink() and content(store, KEY) == b"b"
    assert len(list((store.path(KEY).parent / ".state.v").iterdir())) == 1


def test_a_killed_writers_leftovers_go_with_a_later_generation(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    first = claim(store, LEASE)
    store.put_checkpoint(folder(tmp_path / "a", b"a"), KEY, fence=first)
    orphan = store.path(KEY).parent / ".state.v" / new_version(first.epoch)
    orphan.mkdir()  # a publish of attempt 1 killed mid-write: its folder stays behind
    (orphan / "model.safetensors").write_bytes(b"x")
    second = claim(store, LEASE)
    store.put_checkpoint(folder(tmp_path / "b", b"b"), KEY, fence=second)
    assert not orphan.exists()
    assert build_manifest(store.open_checkpoint(KEY)) == store.read_manifest(KEY)


# ------------------------------------------------------------------------------------ s3:// specifics


def test_a_stale_pointer_write_racing_a_newer_publish_is_refused(
    s3: S3Server, tmp_path: Path
) -> None:
    """The stale attempt passed its lease check and its manifest PUT is on the wire when the newer
    attempt claims and publishes: the conditional PUT fails, the re-read sees a higher generation."""
    bucket = s3.create_bucket()
    with FaultyProxy(s3.port) as proxy:
        slow = s3_store(proxy.endpoint, bucket, tmp_path / "slow")
        fast = s3_store(s3.endpoint, bucket, tmp_path / "fast")
        old = claim(fast, LEASE, "pod old")
        held = proxy.hold(rb"PUT /" + bucket.encode() + rb"/runs/" + KEY.encode() + rb"/MANIFEST[.]json")
        errors: list[BaseException] = []

        def publish_old() -> None:
            try:
                slow.put_checkpoint(folder(tmp_path / "a", b"a"), KEY, fence=old)
            except BaseException as err:  # checked below
                errors.append(err)

        writer = threading.Thread(target=publish_old)
        writer.start()
        assert held.reached.wait(30)
        new = claim(fast, LEASE, "pod new")
        fast.put_checkpoint(folder(tmp_path / "b", b"b"), KEY, fence=new)
        held.release()
        writer.join(30)
    assert len(errors) == 1 and isinstance(errors[0], FencedOut), errors
    assert content(fast, KEY) == b"b"
    assert fast.read_manifest(KEY).placement.generation == 2  # type: ignore[union-attr]
    assert all("/.v/g0000000002-" in k or k.endswith("MANIFEST.json") for k in fast.list(KEY))
