"""The s3:// store: checkpoints in MinIO (or any S3 endpoint), with parallel transfers and retries.

Settings. The spec comes first and the environment fills in. Credentials come only from the
environment: in the cluster the operator mounts the Kubernetes Secret named by spec.storage.secretName
as environment variables.

    endpoint     spec.storage.endpoint, else KWARP_S3_ENDPOINT       host:port (an http:// or https://
                                                                     prefix also sets TLS)
    TLS          the endpoint's scheme; else, for the spec's endpoint, spec.storage.secure; for
                 KWARP_S3_ENDPOINT, KWARP_S3_SECURE=0/1 (else spec.storage.secure)   default on
    region       spec.storage.region, else AWS_REGION / AWS_DEFAULT_REGION (else asked from the server)
    credentials  AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), or
                 MINIO_ACCESS_KEY + MINIO_SECRET_KEY, or MINIO_ROOT_USER + MINIO_ROOT_PASSWORD
    CA bundle    SSL_CERT_FILE (a private CA for MinIO), else certifi's
    transfers    KWARP_S3_PART_SIZE (bytes or 64Mi; default 64Mi), KWARP_S3_CONCURRENCY (default 8)
    retries      KWARP_S3_MAX_ATTEMPTS (6), KWARP_S3_RETRY_DEADLINE_S (300, per operation),
                 KWARP_S3_CONNECT_TIMEOUT_S (10), KWARP_S3_READ_TIMEOUT_S (120)

Consistency. S3 has no rename: a checkpoint is a set of immutable versions (<key>/.v/<version>/) and
one pointer, <key>/MANIFEST.json, swapped last with a conditional PUT (kwarp.store.s3_publish). It is
visible (`has_checkpoint`) once the pointer exists and every object it names exists with the recorded
size and ETag. An overwrite never touches the current version before the new one is complete, and a
stale writer cannot move the pointer back (fencing). Deleting a prefix deletes manifests first, so
a crash mid-delete never leaves a checkpoint that looks whole. A single object (put_bytes) is atomic
in S3 itself.

Transfers. Files above the part size go up as parallel multipart uploads (minio's put_object with
num_parallel_uploads), smaller files several at a time; memory in flight is about 2 x concurrency x
part size (1 GiB at the defaults). Downloads (kwarp.store.s3_download) are about `concurrency` ranged
GETs over all the files, each streamed through a 4 MiB buffer into its place in the file and resumed
where it broke off; sha256 is computed in file order while streaming, or from the page cache for
ranges that complete early, so verifying costs no second read from the server.
Incomplete multipart uploads left by a killed process are invisible garbage: give the bucket an
AbortIncompleteMultipartUpload lifecycle rule.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from kwarp.core.checkpoints import MANIFEST, CheckpointError, Manifest
from kwarp.store.base import StoreError, StoreUnreachable
from kwarp.store.cache import CheckpointCache
from kwarp.store.s3_config import (  # noqa: F401  (re-exported: the store's public settings API)
    CREDENTIAL_CODES,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    Cancelled,
    Credentials,
    MiB,
    RetryPolicy,
    S3Config,
    ShortRead,
    backoff_delay,
    clean_key,
    credentials_from_env,
    describe_error,
    is_transient,
    parse_s3_url,
    parse_size,
    resolve_config,
    root_cause,
    split_endpoint,
    upload_streams,
)
from kwarp.store.s3_download import FileDownload, RangeFetcher, plan_ranges, split_ranges
from kwarp.store.s3_publish import Progress, S3Publishing
from kwarp.store.versions import object_of

if TYPE_CHECKING:
    from kwarp.core.spec import StorageSpec
    from kwarp.store.breaker import CircuitBreaker
    from kwarp.store.fencing import Fence

log = logging.getLogger(__name__)

T = TypeVar("T")


# -------------------------------------------------------------------------------- transfer helpers


@dataclass
class TransferStats:
    """Counters of one store (tests and benchmarks read them; logs summarise them)."""

    retries: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, retries: int = 0, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self.retries += retries
            self.bytes_up += up
            self.bytes_down += down


# -------------------------------------------------------------------------------- the store


class S3Store(S3Publishing):
    """Checkpoints and small objects under s3://bucket/prefix, by the storage layout."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        config: S3Config,
        credentials: Credentials | None = None,
        cache: CheckpointCache | None = None,
        breaker: CircuitBreaker | None = None,
    ):
        self.bucket = bucket
        self.breaker = breaker  # the operator's: fail fast while the endpoint is known to be down
        self.prefix = clean_key(prefix, allow_root=True)
        self.config = config
        self.credentials = credentials
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.stats = TransferStats()
        self._cache = cache
        self._rng = random.Random()
        self._client = Minio(
            config.endpoint,
            access_key=credentials.access_key if credentials else None,
            secret_key=credentials.secret_key if credentials else None,
            session_token=credentials.session_token if credentials else None,
            secure=config.secure,
            region=config.region,
            http_client=self._http_pool(config),
        )

    @classmethod
    def from_url(
        cls, url: str, storage: StorageSpec | None = None, *, env: Mapping[str, str] | None = None
    ) -> S3Store:
        env = os.environ if env is None else env
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, config=resolve_config(storage, env), credentials=credentials_from_env(env))

    @staticmethod
    def _http_pool(config: S3Config) -> urllib3.PoolManager:
        # urllib3 retries nothing: one retry loop (ours) owns attempts, backoff and the deadline, so that
        # attempts do not multiply (urllib3's 5 x ours) and every retry is logged with its cause.
        return urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s),
            retries=False,
            # Enough connections for every worker thread: parts of two files plus small files.
            maxsize=2 * config.concurrency + 4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )

    @property
    def cache(self) -> CheckpointCache:
        if self._cache is None:
            self._cache = CheckpointCache.from_env()
        return self._cache

    def describe(self) -> str:
        scheme = "https" if self.config.secure else "http"
        return f"{self.url} at {scheme}://{self.config.endpoint}"

    # ---------------------------------------------------------------- names

    def _object(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, object_name: str) -> str:
        return object_name[len(self.prefix) + 1 :] if self.prefix else object_name

    def object_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"

    # ---------------------------------------------------------------- retries and error translation

    def _retrying(self, what: str, op: Callable[[], T]) -> T:
        if self.breaker is not None:
            return self.breaker.call(what, lambda: self._attempts(what, op))
        return self._attempts(what, op)

    def _attempts(self, what: str, op: Callable[[], T]) -> T:
        policy = self.config.retry
        start = time.monotonic()
        for attempt in range(1, policy.max_attempts + 1):
            try:
                return op()
            except Cancelled:
                raise
            except Exception as err:
                if not is_transient(err):
                    raise self._permanent(err, what) from err
                elapsed = time.monotonic() - start
                delay = backoff_delay(policy, attempt - 1, self._rng.random())
                if attempt == policy.max_attempts or elapsed + delay > policy.deadline_s:
                    raise self._exhausted(err, what, attempt, elapsed) from err
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    what,
                    describe_error(err),
                    attempt,
                    policy.max_attempts - 1,
                    delay,
                )
                self.stats.add(retries=1)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _permanent(self, err: Exception, what: str) -> Exception:
        cause = root_cause(err)
        if isinstance(cause, S3Error):
            if cause.code == "NoSuchBucket":
                return StoreError(
                    f"bucket '{self.bucket}' does not exist at {self.config.endpoint}: "
                    "create it or fix spec.storage.url"
                )
            if cause.code in CREDENTIAL_CODES:
                if self.credentials is None:
                    found = "no credentials are set in the environment"
                else:
                    found = f"credentials from {self.credentials.source or 'the caller'}"
                return StoreError(
                    f"{what}: S3 refused the request ({cause.code}: {cause.message}; {found}): check the "
                    "credentials in the Secret named by spec.storage.secretName or "
                    f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and that they may read and write bucket '{self.bucket}'"
                )
            return StoreError(f"{what}: {describe_error(cause)}")
        if isinstance(cause, urllib3.exceptions.SSLError):
            return StoreError(
                f"cannot talk TLS to S3 endpoint {self.config.endpoint} ({describe_error(cause)}): check "
                "spec.storage.secure / KWARP_S3_SECURE, and SSL_CERT_FILE for a private CA"
            )
        if isinstance(cause, InvalidResponseError | ServerError):
            return StoreError(
                f"{what}: {self.config.endpoint} did not answer like S3 ({describe_error(cause)}): check "
                "spec.storage.endpoint / KWARP_S3_ENDPOINT and spec.storage.secure"
            )
        return err  # our own errors (CheckpointError, local OSError) pass through unchanged

    def _exhausted(self, err: Exception, what: str, attempts: int, elapsed: float) -> StoreUnreachable:
        cause = root_cause(err)
        tried = f"after {attempts} attempt{'s' if attempts > 1 else ''} over {elapsed:.1f}s"
        if isinstance(cause, S3Error | ServerError | InvalidResponseError):
            return StoreUnreachable(
                f"{what}: S3 endpoint {self.config.endpoint} kept failing {tried}: {describe_error(cause)}"
            )
        return StoreUnreachable(
            f"cannot reach S3 endpoint {self.config.endpoint} {tried} ({what}: {describe_error(cause)}): "
            "check spec.storage.endpoint / KWARP_S3_ENDPOINT and spec.storage.secure"
        )

    # ---------------------------------------------------------------- listing

    def _list_objects(self, object_prefix: str) -> dict[str, int]:
        """{object name: size} of every object whose name starts with object_prefix (one paginated list)."""

        def op() -> dict[str, int]:
            found = self._client.list_objects(self.bucket, prefix=object_prefix or None, recursive=True)
            return {o.object_name: int(o.size or 0) for o in found if o.object_name is not None}

        return self._retrying(f"LIST s3://{self.bucket}/{object_prefix}", op)

    def _under(self, key: str) -> dict[str, int]:
        """{store key: size} of the object `key` and everything below `key/` (path semantics, as a folder)."""
        key = clean_key(key, allow_root=True)
        if not key:
            objects = self._list_objects(f"{self.prefix}/" if self.prefix else "")
            return {self._key(name): size for name, size in objects.items()}
        obj = self._object(key)
        # Prefix without the slash: one call also finds the object named exactly `key`; drop siblings
        # such as iter-10/ when listing iter-1.
        objects = self._list_objects(obj)
        return {
            self._key(name): size
            for name, size in objects.items()
            if name == obj or name.startswith(obj + "/")
        }

    def _folder(self, key: str) -> dict[str, int]:
        """{name relative to the checkpoint: size} of the objects below `key/`."""
        key = clean_key(key)
        objects = self._list_objects(self._object(key) + "/")
        cut = len(self._object(key)) + 1
        return {name[cut:]: size for name, size in objects.items()}

    # ---------------------------------------------------------------- small objects

    def put_bytes(self, key: str, data: bytes, *, fence: Fence | None = None) -> None:
        if fence is not None:
            self.put_fenced(key, data, fence)  # a conditional PUT (kwarp.store.s3_publish)
            return
        obj = self._object(key)

        def op() -> None:
            # One PUT (multipart only above the part size): S3 makes it visible whole or not at all.
            self._client.put_object(
                self.bucket,
                obj,
                io.BytesIO(data),
                len(data),
                part_size=self.config.part_size,
                num_parallel_uploads=1,
            )

        self._retrying(f"PUT {self.object_url(key)}", op)
        self.stats.add(up=len(data))

    def get_bytes(self, key: str) -> bytes | None:
        found = self.get_versioned(key)  # one GET either way; the ETag comes with the body
        if found is None:
            return None
        self.stats.add(down=len(found[0]))
        return found[0]

    def exists(self, key: str) -> bool:
        """True for an object named `key` and for a folder holding objects below `key/` (as FileStore)."""
        obj = self._object(key)

        def op() -> bool:
            # Names come sorted: `obj` itself, then siblings such as obj.json, then the folder obj/.
            for item in self._client.list_objects(self.bucket, prefix=obj, recursive=False):
                name = item.object_name or ""
                if name in (obj, obj + "/"):
                    return True
                if name > obj + "/":
                    return False
            return False

        return self._retrying(f"LIST {self.object_url(key)}", op)

    def list(self, prefix: str = "") -> list[str]:
        """Every object under prefix, the versions of checkpoints included (<key>/.v/<version>/...)."""
        return sorted(self._under(prefix))

    def folders(self, prefix: str) -> list[str]:
        base = clean_key(prefix, allow_root=True)
        obj = (self._object(base) + "/") if base else (f"{self.prefix}/" if self.prefix else "")

        def op() -> list[str]:
            found = self._client.list_objects(self.bucket, prefix=obj or None, recursive=False)
            return sorted(
                name[len(obj) :].rstrip("/")
                for item in found
                if (name := item.object_name or "").endswith("/") and not name[len(obj) :].startswith(".")
            )

        return self._retrying(f"LIST s3://{self.bucket}/{obj}", op)

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """{key: bytes} of the objects `list(prefix)` returns, from the same single listing."""
        return dict(sorted(self._under(prefix).items()))

    def delete_prefix(self, prefix: str) -> int:
        names = sorted(self._under(clean_key(prefix)))
        # Manifests go first: a crash mid-delete must not leave a checkpoint that looks whole.
        manifests = {n for n in names if n == MANIFEST or n.endswith("/" + MANIFEST)}
        self._remove([self._object(n) for n in sorted(manifests)])
        self._remove([self._object(n) for n in names if n not in manifests])
        return len(names)

    def _remove(self, object_names: Iterable[str]) -> None:
        names = list(object_names)
        if not names:
            return

        def op() -> None:
            errors = list(self._client.remove_objects(self.bucket, (DeleteObject(n) for n in names)))
            if errors:
                first = errors[0]
                raise StoreError(
                    f"DELETE s3://{self.bucket}/{first.name}: {first.code}: {first.message} "
                    f"({len(errors)} object(s) not deleted)"
                )

        self._retrying(f"DELETE {len(names)} object(s) in s3://{self.bucket}", op)

    # ---------------------------------------------------------------- checkpoints: reading

    def _require_manifest(self, key: str) -> Manifest:
        manifest = self.read_manifest(key)
        if manifest is None:
            raise CheckpointError(
                f"{self.object_url(key)}: no {MANIFEST}; the checkpoint is absent or was never completed"
            )
        return manifest

    def open_checkpoint(
        self, key: str, *, verify_hashes: bool = True, progress: Progress | None = None
    ) -> Path:
        """The checkpoint as a local folder in the digest-keyed cache.

        A download always checks sha256 while streaming. On a cache hit, verify_hashes re-hashes the
        local copy (as FileStore does in place); pass False to trust the sizes of a verified entry.
        """
        manifest = self._require_manifest(key)
        return self.cache.open(
            manifest,
            lambda staging: self.download_checkpoint(key, staging, manifest=manifest, progress=progress),
            verify_hashes=verify_hashes,
            source=self.object_url(key),
        )

    def download_checkpoint(
        self, key: str, dest: Path, *, manifest: Manifest | None = None, progress: Progress | None = None
    ) -> Manifest:
        """Download a checkpoint into the folder `dest`, verifying every file; its MANIFEST.json last."""
        manifest = manifest or self._require_manifest(key)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        self._check_presence(key, manifest)
        objects = [self._object(f"{key}/{object_of(e)}") for e in manifest.files]
        plans = plan_ranges([e.size for e in manifest.files], self.config.concurrency)
        downloads: list[FileDownload] = []
        try:
            for e, obj, ranges in zip(manifest.files, objects, plans, strict=True):
                path = dest / e.name
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)  # read too: later ranges are hashed from it
                os.ftruncate(fd, e.size)  # ranges land at their offsets
                downloads.append(FileDownload(e, obj, fd, ranges))
            self._fetcher().fetch(downloads, progress)
            for d in downloads:
                os.fsync(d.fd)  # type: ignore[arg-type]
        finally:
            for d in downloads:
                os.close(d.fd)  # type: ignore[arg-type]
        self._check_hashes(key, manifest, downloads)
        tmp = dest / f".{MANIFEST}.tmp"
        tmp.write_text(manifest.to_json())
        os.replace(tmp, dest / MANIFEST)
        return manifest

    def verify_checkpoint(self, key: str, *, progress: Progress | None = None) -> Manifest:
        """Re-hash every object of the checkpoint against its manifest, streaming (nothing is stored)."""
        manifest = self._require_manifest(key)
        self._check_presence(key, manifest)
        # Nothing is stored, so nothing can be hashed back: one GET per file, hashed as it streams.
        downloads = [
            FileDownload(e, self._object(f"{key}/{object_of(e)}"), None, split_ranges(e.size, max(e.size, 1)))
            for e in manifest.files
        ]
        self._fetcher().fetch(downloads, progress)
        self._check_hashes(key, manifest, downloads)
        return manifest

    def _fetcher(self) -> RangeFetcher:
        return RangeFetcher(self._client, self.bucket, self._retrying, self.config.concurrency,
                            on_bytes=lambda n: self.stats.add(down=n))

    def _check_presence(self, key: str, manifest: Manifest) -> None:
        present = self._present(key, manifest)
        for e in manifest.files:
            url = self.object_url(f"{key}/{object_of(e)}")
            found = present.get(object_of(e))
            if found is None:
                raise CheckpointError(f"{url} is listed in {MANIFEST} but missing from the bucket")
            if found[0] != e.size:
                raise CheckpointError(f"{url} has {found[0]} bytes, {MANIFEST} says {e.size}")

    def _check_hashes(self, key: str, manifest: Manifest, downloads: list[FileDownload]) -> None:
        for d in downloads:
            got = d.hexdigest()
            if got == d.entry.sha256:
                continue
            if self.read_manifest(key) != manifest:
                raise CheckpointError(
                    f"{self.object_url(key)} was overwritten while it was being read; open it again"
                )
            raise CheckpointError(
                f"s3://{self.bucket}/{d.object_name} does not match its sha256 in {MANIFEST} "
                f"(got {got[:16]}..., expected {d.entry.sha256[:16]}...): the object is corrupted; "
                "re-upload the checkpoint"
            )


__all__ = [
    "Credentials",
    "RetryPolicy",
    "S3Config",
    "S3Store",
    "backoff_delay",
    "credentials_from_env",
    "is_transient",
    "parse_s3_url",
    "parse_size",
    "resolve_config",
    "split_endpoint",
    "split_ranges",
    "upload_streams",
]
