"""The s3:// store's parts that need no server: retry backoff and the transient/permanent error split,
sizes, configuration and credentials from the spec and the environment, URLs, ranges and the transfer
plan, and the store CLI's view of the checkpoint layout. tests/test_store_s3.py runs the store against a
real S3 server.
"""

from __future__ import annotations

import pytest
import urllib3
from minio.error import S3Error, ServerError

from kwarp.core.checkpoints import CheckpointError, Manifest
from kwarp.core.spec import StorageSpec
from kwarp.store.base import StoreError
from kwarp.store.cli import checkpoint_folders, checkpoint_rows, layout_role
from kwarp.store.s3 import (
    RetryPolicy,
    backoff_delay,
    credentials_from_env,
    is_transient,
    parse_s3_url,
    parse_size,
    resolve_config,
    split_ranges,
    upload_streams,
)
from kwarp.store.s3_download import plan_ranges

MiB = 1 << 20


@pytest.mark.parametrize("retry", range(6))
def test_backoff_grows_exponentially_with_bounded_jitter(retry: int) -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=4.0)
    step = min(4.0, 0.5 * 2**retry)
    low, high = backoff_delay(policy, retry, 0.0), backoff_delay(policy, retry, 0.999999)
    assert low == pytest.approx(step / 2)
    assert high == pytest.approx(step, rel=1e-5)
    assert backoff_delay(policy, retry + 1, 0.0) >= low  # the floor never shrinks


def _s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(body=b"", status=status)
    return S3Error(response, code, "message", "/bucket/key", "req", "host")


@pytest.mark.parametrize(
    ("err", "transient"),
    [
        (_s3_error("SlowDown", 503), True),
        (_s3_error("InternalError", 500), True),
        (_s3_error("RequestTimeout", 400), True),
        (_s3_error("NoSuchBucket", 404), False),
        (_s3_error("AccessDenied", 403), False),
        (_s3_error("InvalidAccessKeyId", 403), False),
        (ServerError("bad gateway", 502), True),
        (ServerError("not found", 404), False),
        (urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), True),
        (urllib3.exceptions.NewConnectionError(None, "Connection refused"), True),  # type: ignore[arg-type]
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), True),  # type: ignore[arg-type]
        (urllib3.exceptions.SSLError("wrong version number"), False),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (OSError(28, "No space left on device"), False),
        (CheckpointError("corrupted"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(err: BaseException, transient: bool) -> None:
    assert is_transient(err) is transient


@pytest.mark.parametrize(
    ("text", "size"),
    [("67108864", 64 * MiB), ("64Mi", 64 * MiB), ("64MiB", 64 * MiB), ("64M", 64_000_000), ("1Gi", 1 << 30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(StoreError, match="KWARP_S3_PART_SIZE"):
        parse_size("lots", "KWARP_S3_PART_SIZE")


@pytest.mark.parametrize(
    ("spec", "env", "endpoint", "secure"),
    [
        (StorageSpec(url="s3://b/p", endpoint="minio:9000"), {}, "minio:9000", True),
        (StorageSpec(url="s3://b/p", endpoint="minio:9000", secure=False), {}, "minio:9000", False),
        (StorageSpec(url="s3://b/p"), {"KWARP_S3_ENDPOINT": "http://minio:9000"}, "minio:9000", False),
        (StorageSpec(url="s3://b/p", endpoint="https://m:443"), {}, "m:443", True),
        (None, {"KWARP_S3_ENDPOINT": "m:9000", "KWARP_S3_SECURE": "0"}, "m:9000", False),
        (StorageSpec(url="s3://b/p"), {"KWARP_S3_ENDPOINT": "m:9000", "KWARP_S3_SECURE": "0"}, "m:9000", False),
        # Issue 14, defect 5: the operator-wide KWARP_S3_SECURE goes with its KWARP_S3_ENDPOINT. A run that
        # names its own endpoint decides TLS itself (its scheme, else spec.storage.secure): never downgraded.
        (StorageSpec(url="s3://b/p", endpoint="https://s3.example:443"), {"KWARP_S3_SECURE": "false"}, "s3.example:443", True),
        (StorageSpec(url="s3://b/p", endpoint="m:9000"), {"KWARP_S3_SECURE": "0"}, "m:9000", True),
        (StorageSpec(url="s3://b/p", endpoint="m:9000", secure=False), {"KWARP_S3_SECURE": "1"}, "m:9000", False),
        (None, {"KWARP_S3_ENDPOINT": "https://m:9000", "KWARP_S3_SECURE": "0"}, "m:9000", True),
        (None, {"KWARP_S3_ENDPOINT": "m:9000", "KWARP_S3_SECURE": "1"}, "m:9000", True),
        (StorageSpec(url="s3://b/p", endpoint="spec:1"), {"KWARP_S3_ENDPOINT": "env:2"}, "spec:1", True),
    ],
)
def test_resolve_config_spec_first_env_fills_in(
    spec: StorageSpec | None, env: dict[str, str], endpoint: str, secure: bool
) -> None:
    config = resolve_config(spec, env)
    assert (config.endpoint, config.secure) == (endpoint, secure)


def test_resolve_config_transfer_and_retry_settings_from_env() -> None:
    env = {
        "KWARP_S3_ENDPOINT": "m:9000",
        "KWARP_S3_PART_SIZE": "16Mi",
        "KWARP_S3_CONCURRENCY": "3",
        "KWARP_S3_MAX_ATTEMPTS": "2",
        "AWS_REGION": "eu-west-1",
    }
    config = resolve_config(None, env)
    assert (config.part_size, config.concurrency, config.retry.max_attempts, config.region) == (
        16 * MiB,
        3,
        2,
        "eu-west-1",
    )
    with pytest.raises(StoreError, match="KWARP_S3_PART_SIZE must be between 5Mi and 5Gi"):
        resolve_config(None, {**env, "KWARP_S3_PART_SIZE": "1Mi"})
    with pytest.raises(StoreError, match="spec.storage.endpoint or KWARP_S3_ENDPOINT"):
        resolve_config(None, {})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "s3cr3t-a", "AWS_SESSION_TOKEN": "tok"},
            ("ak", "s3cr3t-a", "tok"),
        ),
        ({"MINIO_ACCESS_KEY": "mk", "MINIO_SECRET_KEY": "s3cr3t-m"}, ("mk", "s3cr3t-m", None)),
        ({"MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "s3cr3t-r"}, ("root", "s3cr3t-r", None)),
        (
            {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "s3cr3t-a", "MINIO_ROOT_USER": "root"},
            ("ak", "s3cr3t-a", None),
        ),
        ({}, None),
    ],
)
def test_credentials_come_from_the_environment(env: dict[str, str], expected: tuple | None) -> None:
    creds = credentials_from_env(env)
    got = None if creds is None else (creds.access_key, creds.secret_key, creds.session_token)
    assert got == expected
    if creds is not None:
        assert creds.secret_key not in repr(creds)
        assert creds.session_token is None or creds.session_token not in repr(creds)


def test_half_set_credentials_name_the_missing_variable() -> None:
    with pytest.raises(StoreError, match="AWS_SECRET_ACCESS_KEY"):
        credentials_from_env({"AWS_ACCESS_KEY_ID": "a"})


def test_urls_ranges_and_stream_plan() -> None:
    assert parse_s3_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    with pytest.raises(StoreError, match="bucket name"):
        parse_s3_url("s3://My_Bucket/x")
    assert split_ranges(12, 5) == [(0, 5), (5, 5), (10, 2)]
    assert split_ranges(0, 5) == []
    assert upload_streams(0, 8) == (1, 8)
    assert upload_streams(1, 8) == (1, 8)
    assert upload_streams(5, 8) == (2, 4)
    assert upload_streams(5, 2) == (1, 2)


@pytest.mark.parametrize(
    ("sizes", "streams", "expected"),
    [
        # Four large shards keep half of eight streams busy: one GET each, none cut.
        ([64 * MiB] * 4, 8, [[(0, 64 * MiB)]] * 4),
        # Two shards, eight streams: each cut in four.
        ([64 * MiB] * 2, 8, [[(0, 16 * MiB), (16 * MiB, 16 * MiB), (32 * MiB, 16 * MiB), (48 * MiB, 16 * MiB)]] * 2),
        # One file: cut into as many ranges as streams.
        ([40 * MiB], 4, [[(0, 10 * MiB), (10 * MiB, 10 * MiB), (20 * MiB, 10 * MiB), (30 * MiB, 10 * MiB)]]),
        # Many files and few streams: one GET per file, none cut.
        ([9 * MiB, 9 * MiB, 9 * MiB], 2, [[(0, 9 * MiB)]] * 3),
        ([9 * MiB, 1 * MiB, 3 * MiB], 2, [[(0, 9 * MiB)], [(0, 1 * MiB)], [(0, 3 * MiB)]]),
        # Small files are one GET each however many streams there are; empty files none.
        ([100, 0, 3], 8, [[(0, 100)], [], [(0, 3)]]),
        # A large file beside small ones takes the streams the small ones leave.
        ([30 * MiB, 1000, 1000], 3, [[(0, 10 * MiB), (10 * MiB, 10 * MiB), (20 * MiB, 10 * MiB)], [(0, 1000)],
                                      [(0, 1000)]]),
        # Ranges never go below MIN_RANGE (8 MiB): a request costs the server more than it saves.
        ([20 * MiB], 8, [[(0, 20 * MiB // 3 + 1), (20 * MiB // 3 + 1, 20 * MiB // 3 + 1),
                          (2 * (20 * MiB // 3 + 1), 20 * MiB - 2 * (20 * MiB // 3 + 1))]]),
    ],
)
def test_download_ranges_keep_about_streams_gets_in_flight(
    sizes: list[int], streams: int, expected: list[list[tuple[int, int]]]
) -> None:
    assert plan_ranges(sizes, streams) == expected
    for size, ranges in zip(sizes, plan_ranges(sizes, streams), strict=True):  # each file covered once, in order
        assert sum(n for _, n in ranges) == size
        assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:], strict=False))


@pytest.mark.parametrize(
    ("folder", "role"),
    [
        ("run/base", "base (θ_sft)"),
        ("run/iter-2/init", "iter 2 init"),
        ("run/iter-0/slerp", "iter 0 slerp"),
        ("run/iter-0/member-1/final", "iter 0 member 1 final"),
        ("run/iter-0/member-1/state", "iter 0 member 1 state"),
        ("base", "base (θ_sft)"),
        ("run/iter-0/member-1", None),
        ("run/iter-0", None),
    ],
)
def test_layout_roles(folder: str, role: str | None) -> None:
    assert layout_role(folder) == role


def test_checkpoint_rows_tell_complete_incomplete_and_broken() -> None:
    m = Manifest.from_json(
        '{"files": [{"name": "w.safetensors", "size": 10, "sha256": "x"}, {"name": "c.json", "size": 2, "sha256": "y"}]}'
    )
    keys = {
        "r/base/MANIFEST.json": 100,
        "r/base/w.safetensors": 10,
        "r/base/c.json": 2,
        "r/iter-0/member-0/final/w.safetensors": 10,  # upload interrupted: no manifest
        "r/iter-0/member-0/metrics.jsonl": 5,  # not a checkpoint
        "r/iter-0/merge.json": 5,
        "r/iter-1/init/MANIFEST.json": 100,
        "r/iter-1/init/w.safetensors": 9,  # wrong size, c.json missing
        "models/sft/MANIFEST.json": 100,  # outside the layout, but a checkpoint
        "models/sft/w.safetensors": 10,
        "models/sft/c.json": 2,
    }
    assert set(checkpoint_folders(sorted(keys))) == {
        "r/base",
        "r/iter-0/member-0/final",
        "r/iter-1/init",
        "models/sft",
    }
    manifests = {"r/base": m, "r/iter-1/init": m, "models/sft": m}
    rows = {r.key: r for r in checkpoint_rows(keys, manifests)}
    assert {k: r.state for k, r in rows.items()} == {
        "r/base": "complete",
        "r/iter-0/member-0/final": "incomplete",
        "r/iter-1/init": "broken",
        "models/sft": "complete",
    }
    assert rows["r/iter-1/init"].detail == "c.json missing, w.safetensors wrong size"
    assert (rows["r/base"].role, rows["r/base"].bytes, rows["models/sft"].role) == ("base (θ_sft)", 12, "")
