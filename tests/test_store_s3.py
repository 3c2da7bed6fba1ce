"""The s3:// store against a real S3 server over HTTP on loopback (moto), talked to with the minio client.

Network faults are real: a TCP proxy in front of the server resets connections, cuts an upload
midway, or answers 503 SlowDown. Multipart transfers really happen (5 MiB parts, 11 MiB shards).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kwarp.cli import main as kwarp_main
from kwarp.core.checkpoints import MANIFEST, CheckpointError, build_manifest, read_manifest, write_manifest
from kwarp.core.spec import StorageSpec
from kwarp.store import open_store
from kwarp.store.base import StoreError
from kwarp.store.cache import CheckpointCache
from kwarp.store.s3 import Credentials, RetryPolicy, S3Config, S3Store

from .s3server import ACCESS_KEY, SECRET_KEY, FaultyProxy, S3Server, s3_server

MiB = 1 << 20
PART = 5 * MiB
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.02, max_delay_s=0.2, deadline_s=30)

s3 = pytest.fixture(scope="module")(s3_server)


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.create_bucket()


@pytest.fixture
def proxy(s3: S3Server):
    with FaultyProxy(s3.port) as p:
        yield p


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def make_store(
    endpoint: str,
    bucket: str,
    cache_dir: Path,
    *,
    prefix: str = "runs",
    credentials: Credentials | None = None,
    retry: RetryPolicy = FAST_RETRY,
    max_cache_bytes: int | None = None,
) -> S3Store:
    config = S3Config(
        endpoint=endpoint, secure=False, region="us-east-1", part_size=PART, concurrency=4, retry=retry
    )
    return S3Store(
        bucket,
        prefix,
        config=config,
        credentials=credentials or Credentials(ACCESS_KEY, SECRET_KEY, source="test"),
        cache=CheckpointCache(cache_dir, max_cache_bytes),
    )


def make_checkpoint(folder: Path, *, shards: int = 2, shard_bytes: int = 11 * MiB, seed: int = 0) -> Path:
    """A HF-shaped folder: sharded weights (multipart-sized), index, config and a nested tokenizer file."""
    rng = __import__("random").Random(seed)
    folder.mkdir(parents=True)
    for k in range(shards):
        (folder / f"model-{k + 1:05d}-of-{shards:05d}.safetensors").write_bytes(rng.randbytes(shard_bytes))
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (folder / "config.json").write_text(f'{{"seed": {seed}}}')
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (folder / "empty.txt").write_bytes(b"")
    return folder


def stored_object(s3: S3Server, bucket: str, key: str, name: str) -> str:
    """The object name under which the current version of checkpoint `key` keeps file `name`."""
    manifest = json.loads(s3.client().get_object(bucket, f"{key}/{MANIFEST}").read())
    return f"{key}/" + next(f["object"] for f in manifest["files"] if f["name"] == name)


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.name != MANIFEST)
    other = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != MANIFEST)
    return names == other and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


# ------------------------------------------------------------------------------------ against the server


def test_multi_shard_round_trip_uses_multipart_and_parallel_ranges(
    s3: S3Server, bucket: str, cache_dir: Path, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path / "src", shards=3)
    store = make_store(s3.endpoint, bucket, cache_dir)
    assert not store.has_checkpoint("run/base")

    manifest = store.put_checkpoint(src, "run/base")

    assert store.has_checkpoint("run/base")
    assert store.read_manifest("run/base") == manifest == build_manifest(src)
    # The shards went up as multipart uploads: S3 gives such objects an ETag ending in -<parts>; the
    # pointer records each object's ETag.
    shard = stored_object(s3, bucket, "runs/run/base", "model-00001-of-00003.safetensors")
    assert shard.startswith("runs/run/base/.v/g0000000001-")
    stat = s3.client().stat_object(bucket, shard)
    assert stat.etag.endswith("-3")
    pointer = json.loads(s3.client().get_object(bucket, "runs/run/base/MANIFEST.json").read())
    assert next(f["etag"] for f in pointer["files"] if f["name"] == "model-00001-of-00003.safetensors") == stat.etag
    folder = store.open_checkpoint("run/base")
    assert same_files(src, folder)
    assert read_manifest(folder) == manifest
    assert folder == cache_dir / "checkpoints" / manifest.digest
    assert store.verify_checkpoint("run/base") == manifest


def test_every_store_method(s3: S3Server, bucket: str, cache_dir: Path) -> None:
    store = make_store(s3.endpoint, bucket, cache_dir)
    assert store.get_bytes("run/iter-1/eval.json") is None
    assert store.get_json("run/iter-1/eval.json") is None
    store.put_json("run/iter-1/eval.json", {"front": [1, 2]})
    store.put_bytes("run/iter-10/merge.json", b"{}")
    store.put_bytes("run/iter-1/member-0/metrics.jsonl", b'{"step": 1}\n')
    store.put_bytes("run/iter-1/member-0/metrics.jsonl", b'{"step": 2}\n')  # replaced whole
    with store.write_checkpoint("run/iter-1/slerp", meta={"iteration": 1}) as out:
        (out / "model.safetensors").write_bytes(b"w" * 1000)

    assert store.get_json("run/iter-1/eval.json") == {"front": [1, 2]}
    assert store.get_bytes("run/iter-1/member-0/metrics.jsonl") == b'{"step": 2}\n'
    assert store.exists("run/iter-1/eval.json")
    assert store.exists("run/iter-1")  # a folder, as for FileStore
    assert not store.exists("run/iter-1/eval")
    assert not store.exists("run/iter-2")
    version = store.read_manifest("run/iter-1/slerp").placement.version  # type: ignore[union-attr]
    assert store.list("run/iter-1") == [
        "run/iter-1/eval.json",
        "run/iter-1/member-0/metrics.jsonl",
        f"run/iter-1/slerp/.v/{version}/model.safetensors",
        "run/iter-1/slerp/MANIFEST.json",
    ]  # not run/iter-10: a prefix is a path
    assert store.folders("run") == ["iter-1", "iter-10"]
    assert store.folders("run/iter-1/slerp") == []  # versions are the store's own
    assert store.list("run/iter-1/eval.json") == ["run/iter-1/eval.json"]
    assert store.has_checkpoint("run/iter-1/slerp")
    assert store.read_manifest("run/iter-1/slerp").meta == {"iteration": 1}  # type: ignore[union-attr]
    assert len(store.list()) == 5

    assert store.delete_prefix("run/iter-1") == 4
    assert store.delete_prefix("run/iter-1") == 0  # idempotent
    assert store.list() == ["run/iter-10/merge.json"]
    with pytest.raises(StoreError, match="invalid store key"):
        store.put_bytes("run/../escape", b"")


def test_open_store_with_the_run_storage_spec(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KWARP_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("KWARP_S3_SECURE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    storage = StorageSpec(
        url=f"s3://{bucket}/team/runs", endpoint=s3.endpoint, secure=False, region="us-east-1"
    )
    store = open_store(storage.url, storage)
    assert isinstance(store, S3Store)
    store.put_json("demo/iter-0/eval.json", {"ok": True})
    assert s3.client().stat_object(bucket, "team/runs/demo/iter-0/eval.json").size > 0
    assert store.describe() == f"s3://{bucket}/team/runs at http://{s3.endpoint}"


def test_an_interrupted_overwrite_keeps_the_previous_checkpoint(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, tmp_path: Path
) -> None:
    """Issue 14, defect 3: an overwrite cut midway (preemption, eviction, S3 outage) must leave the
    previous checkpoint whole, so that a trainer resumes from its last state instead of step 0."""
    old = make_checkpoint(tmp_path / "old", seed=1)
    new = make_checkpoint(tmp_path / "new", seed=2)
    store = make_store(proxy.endpoint, bucket, cache_dir)
    key = "run/iter-0/member-0/state"
    before = store.put_checkpoint(old, key)

    proxy.cut_after(8 * MiB)  # the network fails in the middle of the first shard's parts
    with pytest.raises(StoreError, match=r"cannot reach S3 endpoint 127\.0\.0\.1:\d+ after 3 attempts"):
        store.put_checkpoint(new, key)
    assert proxy.down
    proxy.heal()

    # The previous checkpoint is still there, whole: visible, verified, and readable.
    assert store.has_checkpoint(key)
    assert store.read_manifest(key) == before
    assert store.verify_checkpoint(key) == before
    assert same_files(old, store.open_checkpoint(key))

    manifest = store.put_checkpoint(new, key)
    assert store.has_checkpoint(key)
    assert manifest == build_manifest(new)
    assert same_files(new, store.open_checkpoint(key))


def test_an_object_replaced_in_place_makes_the_checkpoint_incomplete(
    s3: S3Server, bucket: str, cache_dir: Path, tmp_path: Path
) -> None:
    """Issue 14, defect 4: the manifest records what identifies each object (its ETag), so a file
    replaced by another writer with the same size is caught by the cheap check, not only by a reader."""
    src = make_checkpoint(tmp_path / "src", shards=1, shard_bytes=1000)
    store = make_store(s3.endpoint, bucket, cache_dir)
    store.put_checkpoint(src, "run/base")
    assert store.has_checkpoint("run/base")
    shard = next(o.object_name for o in s3.client().list_objects(bucket, "runs/run/base/", recursive=True)
                 if o.object_name.endswith("model-00001-of-00001.safetensors"))  # fmt: skip
    s3.client().put_object(bucket, shard, io.BytesIO(b"x" * 1000), 1000)  # same size, other bytes

    assert not store.has_checkpoint("run/base")


def test_two_writers_on_one_key_leave_one_whole_checkpoint(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, tmp_path: Path
) -> None:
    """Issue 14, defect 4: writer A publishes last, but writer B uploaded its files while A was finishing
    (same-named runs, a Job recreated during its old pod's grace period, two `kwarp run` on one store).
    Whatever wins, the visible checkpoint is one writer's, whole: never A's manifest over B's bytes."""
    a_dir = make_checkpoint(tmp_path / "a", shards=1, shard_bytes=1000, seed=1)
    b_dir = make_checkpoint(tmp_path / "b", shards=1, shard_bytes=1000, seed=2)
    a = make_store(proxy.endpoint, bucket, cache_dir / "a")
    b = make_store(s3.endpoint, bucket, cache_dir / "b")
    held = proxy.hold(rb"PUT /" + bucket.encode() + rb"/runs/run/base/MANIFEST\.json")
    done: list[BaseException | None] = []

    def publish_a() -> None:
        try:
            a.put_checkpoint(a_dir, "run/base")
            done.append(None)
        except BaseException as err:  # reported below
            done.append(err)

    writer = threading.Thread(target=publish_a)
    writer.start()
    assert held.reached.wait(30), "writer A never sent its manifest"
    b.put_checkpoint(b_dir, "run/base")  # B, start to end, while A's manifest is on its way
    held.release()
    writer.join(30)
    assert done and done[0] is None, done

    assert b.has_checkpoint("run/base")
    manifest = b.verify_checkpoint("run/base")  # what is visible is whole
    winner = a_dir if manifest == build_manifest(a_dir) else b_dir
    assert manifest == build_manifest(winner)
    assert same_files(winner, b.open_checkpoint("run/base"))


def test_superseded_versions_are_collected(
    s3: S3Server, bucket: str, cache_dir: Path, tmp_path: Path
) -> None:
    store = make_store(s3.endpoint, bucket, cache_dir)
    a = tmp_path / "a"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"1" * 100)
    (a / "optimizer.safetensors").write_bytes(b"2" * 100)
    key = "run/iter-0/member-0/state"
    store.put_checkpoint(a, key)
    (a / "optimizer.safetensors").unlink()
    store.put_checkpoint(a, key)
    version = store.read_manifest(key).placement.version  # type: ignore[union-attr]
    assert store.list(key) == [f"{key}/.v/{version}/model.safetensors", f"{key}/MANIFEST.json"]


def test_a_checkpoint_of_the_older_layout_is_read_and_replaced(
    s3: S3Server, bucket: str, cache_dir: Path, tmp_path: Path
) -> None:
    """Buckets written before versioned publishing keep working: files at <key>/<name>, a plain manifest."""
    old = make_checkpoint(tmp_path / "old", shards=1, shard_bytes=1000, seed=1)
    manifest = write_manifest(old)
    client = s3.client()
    for p in sorted(old.rglob("*")):
        if p.is_file():
            client.fput_object(bucket, f"runs/run/base/{p.relative_to(old).as_posix()}", str(p))
    store = make_store(s3.endpoint, bucket, cache_dir)
    assert store.has_checkpoint("run/base")
    assert store.read_manifest("run/base") == manifest
    assert same_files(old, store.open_checkpoint("run/base"))

    new = make_checkpoint(tmp_path / "new", shards=1, shard_bytes=1000, seed=2)
    store.put_checkpoint(new, "run/base")
    version = store.read_manifest("run/base").placement.version  # type: ignore[union-attr]
    assert all(k.startswith(f"run/base/.v/{version}/") or k == "run/base/MANIFEST.json" for k in store.list("run/base"))
    assert same_files(new, store.open_checkpoint("run/base"))


def test_corrupted_object_is_detected_on_download_naming_the_object(
    s3: S3Server, bucket: str, cache_dir: Path, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path / "src")
    store = make_store(s3.endpoint, bucket, cache_dir)
    store.put_checkpoint(src, "run/base")
    shard = stored_object(s3, bucket, "runs/run/base", "model-00002-of-00002.safetensors")
    data = bytearray((src / "model-00002-of-00002.safetensors").read_bytes())
    data[7 * MiB] ^= 0xFF  # one flipped byte, in the second range: same size, another ETag
    s3.client().put_object(bucket, shard, io.BytesIO(bytes(data)), len(data))

    assert not store.has_checkpoint("run/base")  # the cheap check sees the ETag; readers re-hash anyway
    with pytest.raises(CheckpointError, match=f"s3://{bucket}/{shard} does not match its sha256"):
        store.open_checkpoint("run/base")
    with pytest.raises(CheckpointError, match=f"s3://{bucket}/{shard} does not match its sha256"):
        store.verify_checkpoint("run/base")
    # Nothing half-verified stays in the cache.
    assert [p.name for p in (cache_dir / "checkpoints").iterdir()] == [".locks"]

    config = stored_object(s3, bucket, "runs/run/base", "config.json")
    s3.client().remove_object(bucket, config)
    assert not store.has_checkpoint("run/base")
    with pytest.raises(CheckpointError, match=f"s3://{bucket}/{config} is listed in"):
        store.open_checkpoint("run/base")


def test_a_local_folder_that_contradicts_its_manifest_is_not_published(
    s3: S3Server, bucket: str, cache_dir: Path, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path / "src", shards=1, shard_bytes=1000)
    write_manifest(src)
    (src / "config.json").write_text('{"seed": 9}')  # same size, other bytes
    store = make_store(s3.endpoint, bucket, cache_dir)
    with pytest.raises(CheckpointError, match="config.json does not match its sha256"):
        store.put_checkpoint(src, "run/base")
    assert not store.has_checkpoint("run/base")


@pytest.mark.parametrize("case", ["unknown key", "wrong secret", "no permission"])
def test_wrong_credentials_fail_fast_with_what_to_check(
    s3: S3Server, bucket: str, cache_dir: Path, case: str
) -> None:
    boto3 = pytest.importorskip("boto3")  # IAM users for moto's authentication (test-only, comes with moto)
    with s3.authentication(unauthenticated_requests=2):
        iam = boto3.client(
            "iam",
            endpoint_url=f"http://{s3.endpoint}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        iam.create_user(UserName=f"kwarp-{case.replace(' ', '-')}")
        key = iam.create_access_key(UserName=f"kwarp-{case.replace(' ', '-')}")["AccessKey"]
        creds, code = {
            "unknown key": (
                Credentials("AKIAKWARPUNKNOWN0000", "x", source="AWS_ACCESS_KEY_ID"),
                "InvalidAccessKeyId",
            ),
            "wrong secret": (Credentials(key["AccessKeyId"], "not-the-secret"), "SignatureDoesNotMatch"),
            "no permission": (Credentials(key["AccessKeyId"], key["SecretAccessKey"]), "AccessDenied"),
        }[case]
        store = make_store(s3.endpoint, bucket, cache_dir, credentials=creds)
        started = time.monotonic()
        with pytest.raises(StoreError, match=code) as err:
            store.has_checkpoint("run/base")
        assert time.monotonic() - started < 2
    assert "spec.storage.secretName or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in str(err.value)
    assert store.stats.retries == 0


def test_missing_bucket_fails_fast_with_what_to_do(s3: S3Server, cache_dir: Path) -> None:
    store = make_store(s3.endpoint, "kwarp-no-such-bucket", cache_dir)
    expected = (
        rf"bucket 'kwarp-no-such-bucket' does not exist at {s3.endpoint}: create it or fix spec.storage.url"
    )
    for op in (
        lambda: store.has_checkpoint("run/base"),
        lambda: store.get_json("run/iter-0/eval.json"),
        lambda: store.put_bytes("x", b"1"),
        lambda: store.exists("x"),
    ):
        started = time.monotonic()
        with pytest.raises(StoreError, match=expected):
            op()
        assert time.monotonic() - started < 2
    assert store.stats.retries == 0


def test_unreachable_endpoint_is_retried_then_named(cache_dir: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_store(f"127.0.0.1:{port}", "kwarp-any", cache_dir)
    with pytest.raises(StoreError) as err:
        store.get_bytes("run/iter-0/eval.json")
    message = str(err.value)
    assert f"cannot reach S3 endpoint 127.0.0.1:{port} after 3 attempts" in message
    assert "check spec.storage.endpoint / KWARP_S3_ENDPOINT and spec.storage.secure" in message
    assert store.stats.retries == 2


def test_reset_connections_are_retried_with_backoff(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(proxy.endpoint, bucket, cache_dir)
    proxy.drop_next(2)
    with caplog.at_level(logging.WARNING, logger="kwarp.store.s3"):
        store.put_json("run/iter-0/eval.json", {"front": []})
    assert proxy.dropped == 2
    assert store.stats.retries == 2
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert "retry 1/2" in retries[0] and "retry 2/2" in retries[1]
    assert "Connection" in retries[0]
    assert store.get_json("run/iter-0/eval.json") == {"front": []}


def test_a_download_reset_midway_resumes_where_it_broke_off(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").write_bytes(random.Random(3).randbytes(40 * MiB))
    make_store(s3.endpoint, bucket, cache_dir).put_checkpoint(src, "run/base")
    store = make_store(proxy.endpoint, bucket, cache_dir)
    store.config = replace(store.config, concurrency=1)  # one stream: one range, whatever the plan
    proxy.reset_counters()
    proxy.reset_downstream_after(37 * MiB)

    folder = store.open_checkpoint("run/base")

    assert same_files(src, folder)
    assert store.stats.retries == 1
    # The retry asked for the rest of the file from where the stream broke off: no byte was asked for twice.
    ranges = [(first, last) for first, last in proxy.ranges if last is not None]
    assert len(ranges) == 2
    (first, last), (resumed, end) = ranges
    assert (first, last, end) == (0, 40 * MiB - 1, 40 * MiB - 1)
    assert 0 < resumed < 40 * MiB


def test_slow_down_503_is_retried(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )
    proxy.respond_next(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    store = make_store(proxy.endpoint, bucket, cache_dir)
    with caplog.at_level(logging.WARNING, logger="kwarp.store.s3"):
        assert store.get_bytes("run/iter-0/eval.json") is None
    assert store.stats.retries == 1
    assert any("SlowDown" in r.getMessage() for r in caplog.records)


def test_second_open_is_a_cache_hit_without_transfer(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path / "src")
    make_store(s3.endpoint, bucket, cache_dir).put_checkpoint(src, "run/base")
    total = build_manifest(src).total_bytes

    first = make_store(proxy.endpoint, bucket, cache_dir).open_checkpoint("run/base")
    assert proxy.bytes_down > total
    proxy.reset_counters()
    # Another process of the node (a fresh store and cache object on the same folder).
    second = make_store(proxy.endpoint, bucket, cache_dir).open_checkpoint("run/base", verify_hashes=True)
    assert second == first
    assert proxy.bytes_down < 8192  # the manifest, nothing else
    assert same_files(src, second)


def test_concurrent_opens_share_one_download(
    s3: S3Server, bucket: str, proxy: FaultyProxy, cache_dir: Path, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path / "src")
    make_store(s3.endpoint, bucket, cache_dir).put_checkpoint(src, "run/base")
    total = build_manifest(src).total_bytes
    results: list[Path] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            results.append(make_store(proxy.endpoint, bucket, cache_dir).open_checkpoint("run/base"))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(set(results)) == 1 and len(results) == 3
    assert total < proxy.bytes_down < 1.5 * total  # downloaded once, not three times
    assert same_files(src, results[0])
    assert not list((cache_dir / "checkpoints").glob(".*staging*"))


# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def cli_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KWARP_S3_PART_SIZE", "5Mi")
    monkeypatch.setenv("KWARP_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("KWARP_CACHE", str(tmp_path / "cli-cache"))
    monkeypatch.setenv("COLUMNS", "200")


def test_cli_cp_ls_verify_round_trip(
    s3: S3Server, bucket: str, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from kwarp.core.weights import ShardWriter, iter_tensors

    torch.manual_seed(0)
    src = tmp_path / "sft"
    writer = ShardWriter(src, max_shard_bytes=6 * MiB)
    for k in range(4):
        writer.add(f"layers.{k}.weight", torch.randn(768, 1024))  # 3 MiB each: two 6 MiB shards
    writer.close()
    (src / "config.json").write_text('{"model_type": "gpt2"}')
    assert not (src / MANIFEST).exists()  # a plain folder: cp computes the manifest

    assert kwarp_main(["store", "cp", str(src), f"s3://{bucket}/runs/demo/base"]) == 0
    assert "computing one" in capsys.readouterr().out
    assert kwarp_main(["store", "ls", f"s3://{bucket}/runs"]) == 0
    out = capsys.readouterr().out
    assert "model-00001-of-00002.safetensors" in out and "demo/base/MANIFEST.json" in out
    assert "demo/base/.v/g0000000001-" in out  # the objects as stored: the current version's
    s3.client().put_object(bucket, "runs/demo/iter-0/member-0/final/model.safetensors", io.BytesIO(b"x"), 1)
    assert kwarp_main(["store", "ls", f"s3://{bucket}/runs", "--checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "demo/base" in out and "base (θ_sft)" in out and "complete" in out
    assert "iter 0 member 0 final" in out and "incomplete" in out
    assert kwarp_main(["store", "verify", f"s3://{bucket}/runs/demo/base"]) == 0
    assert "match their sha256" in capsys.readouterr().out

    back = tmp_path / "back" / "base"
    assert kwarp_main(["store", "cp", f"s3://{bucket}/runs/demo/base", str(back)]) == 0
    assert same_files(src, back)
    assert kwarp_main(["store", "verify", f"file://{back}"]) == 0
    assert dict(iter_tensors(back)).keys() == dict(iter_tensors(src)).keys()
    assert all(torch.equal(t, dict(iter_tensors(src))[n]) for n, t in iter_tensors(back))
    capsys.readouterr()

    # s3 -> s3, then a corrupted object makes `verify` fail with exit code 2, naming the object.
    assert kwarp_main(["store", "cp", f"s3://{bucket}/runs/demo/base", f"s3://{bucket}/archive/base"]) == 0
    shard = stored_object(s3, bucket, "archive/base", "model-00002-of-00002.safetensors")
    size = s3.client().stat_object(bucket, shard).size
    s3.client().put_object(bucket, shard, io.BytesIO(os.urandom(size)), size)
    capsys.readouterr()
    assert kwarp_main(["store", "verify", f"s3://{bucket}/archive/base"]) == 2
    assert f"s3://{bucket}/{shard} does not match its sha256" in capsys.readouterr().err


def test_cli_missing_bucket_is_a_user_error(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert kwarp_main(["store", "ls", "s3://kwarp-no-such-bucket/runs", "--checkpoints"]) == 2
    assert "bucket 'kwarp-no-such-bucket' does not exist" in capsys.readouterr().err
