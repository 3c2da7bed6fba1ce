"""The publish and visibility side of the s3:// store: versioned uploads, one pointer, fencing, collection.

S3 has no rename. A checkpoint at <key> is therefore a set of immutable versions and one pointer:

    <key>/.v/<version>/<file>     the objects of one upload (never overwritten)
    <key>/MANIFEST.json           the pointer: the manifest, each file's object and ETag, the version,
                                  its generation and its writer

`put_checkpoint` uploads a new version beside the current one (files in parallel, sha256 and ETag
taken while streaming), then swaps the pointer with a conditional PUT (If-Match the pointer it read,
If-None-Match for a first publish), then deletes the superseded versions. An interrupted publish
therefore leaves the previous checkpoint whole; two writers never mix (each has its own version);
the pointer never moves to a lower generation, so a stale attempt cannot publish over a newer one
(kwarp.store.versions, kwarp.store.fencing). `has_checkpoint` is one GET of the pointer and one LIST
of the version: every object present with its size and its recorded ETag.

Servers that ignore conditional PUTs (older MinIO or Ceph) still get whole checkpoints and the
generation check; only two writers racing within milliseconds could then both pass it. A server that
answers 501 NotImplemented to them is written to without conditions (logged once).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from minio import Minio
from minio.error import S3Error

from kwarp.core.checkpoints import DIGESTS, MANIFEST, CheckpointError, FileEntry, Manifest
from kwarp.store.base import Store, StoreError, WriteConflict
from kwarp.store.s3_config import Cancelled, S3Config, clean_key, upload_streams
from kwarp.store.versions import (
    VERSIONS,
    check_generation,
    missing_or_changed,
    new_version,
    normalize_etag,
    object_of,
    placed,
    superseded,
    writer_generation,
)

if TYPE_CHECKING:
    from kwarp.store.fencing import Fence

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int], None]
"""Called with a number of bytes moved (negative when a failed attempt's bytes are taken back)."""

_SWAP_ATTEMPTS = 10
# S3 error codes of a failed precondition: the object changed (412), or vanished under If-Match (404).
_CONFLICT_CODES = frozenset({"PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"})


class _HashingReader:
    """A file wrapper that hashes what minio reads from it (parts are read in order) and can be cancelled."""

    def __init__(self, f: io.BufferedReader, stop: threading.Event, progress: Progress | None):
        self._f = f
        self._stop = stop
        self._progress = progress
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():
            raise Cancelled()
        data = self._f.read(size)
        self.sha256.update(data)
        self.count += len(data)
        if self._progress and data:
            self._progress(len(data))
        return data


def local_files(folder: Path) -> list[str]:
    """Relative '/'-separated names of every file of a checkpoint folder but its manifest."""
    names = []
    for root, _dirs, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
            if rel not in (MANIFEST, DIGESTS):
                names.append(rel)
    return sorted(names)


class S3Publishing(Store):
    """Mixin of S3Store: what makes a checkpoint visible. S3Store supplies the client and the retry loop."""

    bucket: str
    config: S3Config
    stats: Any
    _client: Minio
    _conditional: bool = True

    # Supplied by S3Store.
    def _object(self, key: str) -> str: ...  # pragma: no cover
    def object_url(self, key: str) -> str: ...  # pragma: no cover
    def _retrying(self, what: str, op: Callable[[], T]) -> T: ...  # type: ignore[empty-body]  # pragma: no cover
    def _remove(self, object_names: Iterable[str]) -> None: ...  # pragma: no cover

    # ---------------------------------------------------------------- listing with ETags

    def _objects(self, object_prefix: str) -> dict[str, tuple[int, str | None]]:
        """{object name: (size, ETag)} of every object whose name starts with object_prefix."""

        def op() -> dict[str, tuple[int, str | None]]:
            found = self._client.list_objects(self.bucket, prefix=object_prefix or None, recursive=True)
            return {o.object_name: (int(o.size or 0), normalize_etag(o.etag)) for o in found if o.object_name}

        return self._retrying(f"LIST s3://{self.bucket}/{object_prefix}", op)

    def _present(self, key: str, manifest: Manifest) -> dict[str, tuple[int, str | None]]:
        """{object relative to the key: (size, ETag)}: one listing of the pointer's version (or the key)."""
        base = self._object(key) + "/"
        scope = f"{VERSIONS}/{manifest.placement.version}/" if manifest.placement else ""
        return {name[len(base) :]: info for name, info in self._objects(base + scope).items()}

    # ---------------------------------------------------------------- conditional small objects

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        obj = self._object(key)

        def op() -> tuple[bytes, str] | None:
            try:
                response = self._client.get_object(self.bucket, obj)
            except S3Error as err:
                if err.code == "NoSuchKey":
                    return None
                raise
            try:
                return response.read(), normalize_etag(response.headers.get("ETag")) or ""
            finally:
                response.close()
                response.release_conn()

        return self._retrying(f"GET {self.object_url(key)}", op)

    def put_if(self, key: str, data: bytes, *, etag: str | None, content_type: str = "application/json") -> None:
        obj = self._object(key)
        headers = {"Content-Type": content_type}

        def op() -> None:
            conditions = ({"If-Match": f'"{etag}"'} if etag else {"If-None-Match": "*"}) if self._conditional else {}
            try:
                # minio's public put_object turns unknown headers into x-amz-meta-*: the plain PUT takes them as is.
                self._client._put_object(self.bucket, obj, data, headers={**headers, **conditions})
            except S3Error as err:
                if err.code in _CONFLICT_CODES:
                    raise WriteConflict(f"{self.object_url(key)} changed since it was read") from None
                if err.code == "NotImplemented" and self._conditional:
                    log.warning("%s does not support conditional PUTs: writing %s without a precondition",
                                self.config.endpoint, self.object_url(key))  # fmt: skip
                    self._conditional = False
                    self._client._put_object(self.bucket, obj, data, headers=headers)
                    return
                raise

        self._retrying(f"PUT {self.object_url(key)}", op)
        self.stats.add(up=len(data))

    def _etag(self, key: str) -> tuple[str | None, bool]:
        """(the object's ETag, whether it exists): one HEAD, the object's content not read."""
        obj = self._object(key)

        def op() -> tuple[str | None, bool]:
            try:
                return normalize_etag(self._client.stat_object(self.bucket, obj).etag), True
            except S3Error as err:
                if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None, False
                raise

        return self._retrying(f"HEAD {self.object_url(key)}", op)

    def put_fenced(self, key: str, data: bytes, fence: Fence) -> None:
        """A small object written for a task attempt: the object's ETag read, the lease checked, then a PUT on
        condition that the object is still the one read (If-Match, If-None-Match when absent). A newer attempt
        writes only after its claim; so when the PUT finds the object changed (an attempt frozen between its
        check and its PUT, or a PUT held in the network), the next round's lease check refuses a stale attempt
        (FencedOut), and an older attempt never lands over a newer one's object."""
        what = f"writing {self.object_url(key)}"
        for _ in range(_SWAP_ATTEMPTS):
            etag, exists = self._etag(key)
            self.check_fence(fence, what)
            try:
                # A server without conditional PUTs (501) is written to plainly: the window stays open there.
                self.put_if(key, data, etag=etag if exists else None, content_type="application/octet-stream")
                return
            except WriteConflict:
                continue  # another writer got in between: look at the object and the lease again
        raise StoreError(f"{what}: {_SWAP_ATTEMPTS} other writers got in first")

    # ---------------------------------------------------------------- visibility

    def _pointer(self, key: str) -> tuple[Manifest | None, str] | None:
        """(the checkpoint's manifest, or None if it is malformed; the pointer's ETag), or None if absent."""
        found = self.get_versioned(f"{clean_key(key)}/{MANIFEST}")
        if found is None:
            return None
        try:
            return Manifest.from_json(found[0]), found[1]
        except CheckpointError as err:
            log.warning("%s: %s; treating the checkpoint as absent", self.object_url(key), err)
            return None, found[1]

    def read_manifest(self, key: str) -> Manifest | None:
        found = self._pointer(key)
        return found[0] if found else None

    def has_checkpoint(self, key: str) -> bool:
        manifest = self.read_manifest(key)
        return manifest is not None and not missing_or_changed(manifest, self._present(key, manifest))

    # ---------------------------------------------------------------- publishing

    def put_checkpoint(
        self, local_dir: Path, key: str, *, progress: Progress | None = None, fence: Fence | None = None
    ) -> Manifest:
        """Upload a local checkpoint folder as a new version, then point the key at it, then collect.

        With a MANIFEST.json in the folder, its files are uploaded and their sha256 (computed while
        uploading) must match it, or nothing is published; without one, the manifest is built from
        the hashes computed during the upload. With a fence (the task's lease), a stale attempt is
        refused before it uploads anything and again before the pointer moves (FencedOut).
        """
        local_dir = Path(local_dir)
        key = clean_key(key)
        what = f"publishing {self.object_url(key)}"
        local, names, sizes = self._local_checkpoint(local_dir)

        self.check_fence(fence, what)
        found = self._pointer(key)
        current = found[0].placement.generation if found and found[0] and found[0].placement else None
        generation = writer_generation(current, fence.epoch if fence else None)
        check_generation(current, generation, fenced=fence is not None, what=what)
        version = new_version(generation)

        started = time.monotonic()
        try:
            uploaded = self._upload_files(local_dir, f"{key}/{VERSIONS}/{version}", sizes, progress)
            hashes = {n: sha for n, (sha, _) in uploaded.items()}
            if local:
                for e in local.files:
                    if hashes[e.name] != e.sha256:
                        raise CheckpointError(
                            f"{local_dir / e.name} does not match its sha256 in {MANIFEST} (corrupted); "
                            f"nothing was published at {self.object_url(key)}"
                        )
                manifest = local
            else:
                manifest = Manifest(files=tuple(FileEntry(n, sizes[n], hashes[n]) for n in names), meta={})
            pointer = placed(manifest, version, generation, fence.holder if fence else None,
                             {n: etag for n, (_, etag) in uploaded.items()})  # fmt: skip
            replaced = self._swap_pointer(key, pointer, fence)
        except Exception:
            self._discard(key, version)
            raise
        self._collect(key, pointer, replaced)
        seconds = time.monotonic() - started
        log.info(
            "uploaded %s: %d files, %.1f MB in %.1fs (%.0f MB/s), version %s",
            self.object_url(key), len(names), manifest.total_bytes / 1e6, seconds,
            manifest.total_bytes / 1e6 / max(seconds, 1e-9), version,
        )  # fmt: skip
        return manifest

    def _local_checkpoint(self, local_dir: Path) -> tuple[Manifest | None, list[str], dict[str, int]]:
        """(its manifest if it has one, file names, sizes) of a local folder, checked against each other."""
        if not local_dir.is_dir():
            raise CheckpointError(f"{local_dir} is not a folder")
        local = Manifest.from_json((local_dir / MANIFEST).read_bytes()) if (local_dir / MANIFEST).is_file() else None
        names = [e.name for e in local.files] if local else local_files(local_dir)
        sizes = {}
        for name in names:
            try:
                sizes[name] = (local_dir / name).stat().st_size
            except FileNotFoundError:
                raise CheckpointError(f"{local_dir}: '{name}' listed in {MANIFEST} is missing") from None
        for e in local.files if local else ():
            if sizes[e.name] != e.size:
                raise CheckpointError(f"{local_dir}: '{e.name}' has {sizes[e.name]} bytes, {MANIFEST} says {e.size}")
        return local, names, sizes

    def _swap_pointer(self, key: str, pointer: Manifest, fence: Fence | None) -> Manifest | None:
        """Compare-and-swap <key>/MANIFEST.json to `pointer`; return the manifest it replaced (None: none)."""
        what = f"publishing {self.object_url(key)}"
        assert pointer.placement is not None
        for _ in range(_SWAP_ATTEMPTS):
            self.check_fence(fence, what)
            found = self._pointer(key)
            old = found[0] if found else None
            current = old.placement.generation if old and old.placement else (0 if found else None)
            check_generation(current, pointer.placement.generation, fenced=fence is not None, what=what)
            try:
                self.put_if(f"{key}/{MANIFEST}", pointer.to_json().encode(), etag=found[1] if found else None)
                return old
            except WriteConflict:
                now = self.read_manifest(key)
                if now is not None and now.placement == pointer.placement:
                    return old  # our PUT landed; the retry of a lost acknowledgement saw our own ETag
        raise StoreError(f"{what}: its manifest kept changing ({_SWAP_ATTEMPTS} tries): another writer is "
                         "publishing the same checkpoint; nothing was published")  # fmt: skip

    def _discard(self, key: str, version: str) -> None:
        """Remove the objects of a version that was not published (best effort: collected later otherwise)."""
        try:
            now = self.read_manifest(key)
            if now is not None and now.placement is not None and now.placement.version == version:
                return  # it did become current (an acknowledgement was lost): keep it
            self._remove(self._objects(f"{self._object(key)}/{VERSIONS}/{version}/"))
        except Exception as err:  # the store may be the reason of the failure: leave it to a later publish
            log.info("%s: objects of unpublished version %s left for a later publish (%s)", self.object_url(key), version, err)

    def _collect(self, key: str, pointer: Manifest, replaced: Manifest | None) -> None:
        """Delete what the new pointer superseded: earlier versions and the files of an older-layout checkpoint."""
        assert pointer.placement is not None
        base = self._object(key) + "/"
        try:
            by_version: dict[str, list[str]] = {}
            for name in self._objects(base + f"{VERSIONS}/"):
                parts = name[len(base) :].split("/")
                by_version.setdefault(parts[1] if len(parts) > 2 else "", []).append(name)
            old = replaced.placement.version if replaced and replaced.placement else None
            victims = [n for v in superseded(by_version, pointer.placement.version, old, pointer.placement.generation)
                       for n in by_version[v]]  # fmt: skip
            if replaced is not None and replaced.placement is None:  # older layout: its files at <key>/<name>
                victims += [base + object_of(e) for e in replaced.files]
            self._remove(victims)
        except Exception as err:  # housekeeping: the next publish collects them
            log.warning("%s: superseded versions not collected (%s)", self.object_url(key), err)

    def _upload_files(
        self, local_dir: Path, key: str, sizes: dict[str, int], progress: Progress | None
    ) -> dict[str, tuple[str, str | None]]:
        """{name: (sha256, ETag)} of every file uploaded under `key`."""
        part = self.config.part_size
        small = [n for n in sizes if sizes[n] <= part]
        large = sorted((n for n in sizes if sizes[n] > part), key=lambda n: -sizes[n])
        files_at_once, parts_per_file = upload_streams(len(large), self.config.concurrency)
        stop = threading.Event()
        results: dict[str, tuple[str, str | None]] = {}
        # Small files first, many at a time (one PUT each); then the shards, a few at a time, each
        # with its parts in parallel.
        for names, workers, parallel in (
            (small, min(self.config.concurrency, max(1, len(small))), 1),
            (large, files_at_once, parts_per_file),
        ):
            if not names:
                continue
            with ThreadPoolExecutor(workers, thread_name_prefix="kwarp-s3-put") as pool:
                futures = {
                    pool.submit(
                        self._upload_file, local_dir / n, f"{key}/{n}", sizes[n], parallel, stop, progress
                    ): n
                    for n in names
                }
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                errors = [f.exception() for f in done if f.exception() is not None]
                if errors:
                    stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise errors[0]  # type: ignore[misc]
                results.update({futures[f]: f.result() for f in futures})
        return results

    def _upload_file(
        self, path: Path, key: str, size: int, parallel: int, stop: threading.Event, progress: Progress | None
    ) -> tuple[str, str | None]:
        obj = self._object(key)

        def op() -> tuple[str, str | None]:
            with open(path, "rb") as f:
                reader = _HashingReader(f, stop, progress)
                try:
                    result = self._client.put_object(
                        self.bucket,
                        obj,
                        reader,
                        size,
                        part_size=self.config.part_size,
                        num_parallel_uploads=parallel,
                    )
                except BaseException:
                    if progress and reader.count:
                        progress(-reader.count)  # this attempt's bytes are sent again by the next
                    raise
                if reader.count != size:
                    raise CheckpointError(
                        f"{path} changed size while it was uploaded ({reader.count} != {size} bytes)"
                    )
                return reader.sha256.hexdigest(), normalize_etag(result.etag)

        digest = self._retrying(f"PUT {self.object_url(key)}", op)
        self.stats.add(up=size)
        return digest
