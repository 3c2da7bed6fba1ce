"""The file:// store: a folder on a local or shared file system.

A checkpoint key is a symbolic link to one complete version folder beside it:

    <parent>/<name>                 -> .<name>.v/<version>    (relative link)
    <parent>/.<name>.v/<version>/   the files and MANIFEST.json of one publish
    <parent>/.<name>.lock           taken (flock) while the link is swapped

Publishing fills a new version folder, writes its manifest, then, under the lock, checks the writer's
fencing token and replaces the link in one rename (atomic on POSIX), then removes superseded
versions. So the key always names a whole checkpoint (the old one until the rename, the new one
after), and the key still opens as a plain Hugging Face folder. Readers get the resolved version
folder, so a publish during a read never mixes two versions. A folder of the older layout (a real
directory at the key) is moved into the versions folder when it is first replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kwarp.core.checkpoints import (
    MANIFEST,
    CheckpointError,
    Manifest,
    _fsync_dir,
    read_manifest,
    verify,
    write_manifest,
)
from kwarp.store.base import Store, StoreError, WriteConflict
from kwarp.store.versions import check_generation, generation_of, superseded, writer_generation
from kwarp.store.versions import new_version as version_name

if TYPE_CHECKING:
    from kwarp.store.fencing import Fence

log = logging.getLogger(__name__)


def _check_key(key: str) -> str:
    parts = key.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key '{key}'")
    return "/".join(parts)


def _versions(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.v"


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class FileStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    # -- checkpoints
    def has_checkpoint(self, key: str) -> bool:
        try:
            verify(self._resolved(key), hashes=False)
        except (CheckpointError, OSError):
            return False
        return True

    def read_manifest(self, key: str) -> Manifest | None:
        try:
            return read_manifest(self._resolved(key))
        except (CheckpointError, OSError):
            return None

    def put_checkpoint(self, local_dir: Path, key: str, *, fence: Fence | None = None) -> Manifest:
        local_dir = Path(local_dir)

        def fill(folder: Path) -> Manifest:
            for item in local_dir.iterdir():
                if item.name == MANIFEST:
                    continue
                if item.is_dir():
                    shutil.copytree(item, folder / item.name)
                else:
                    shutil.copy2(item, folder / item.name)
            if (local_dir / MANIFEST).is_file():
                shutil.copy2(local_dir / MANIFEST, folder / MANIFEST)
                return verify(folder, hashes=True)
            return write_manifest(folder)

        with self.new_version(key, fence) as folder:
            manifest = fill(folder)
        return manifest

    @contextmanager
    def write_checkpoint(
        self, key: str, meta: dict[str, Any] | None = None, *, fence: Fence | None = None
    ) -> Iterator[Path]:
        # Written straight into the new version folder inside the store: publishing is one rename.
        with self.new_version(key, fence) as folder:
            yield folder
            write_manifest(folder, meta)

    @contextmanager
    def new_version(self, key: str, fence: Fence | None = None) -> Iterator[Path]:
        """A new, empty version folder of `key` to fill with the files and their MANIFEST.json; published
        when the block ends well, removed otherwise."""
        dest = self.path(key)
        self.check_fence(fence, f"publishing {dest}")  # before any work: a stale attempt writes nothing
        _, current = self._current(dest)
        generation = writer_generation(current, fence.epoch if fence else None)
        folder = _versions(dest) / version_name(generation)
        folder.mkdir(parents=True)
        published = False
        try:
            yield folder
            if not (folder / MANIFEST).is_file():
                raise CheckpointError(f"{dest}: the new version has no {MANIFEST}; nothing was published")
            self._swap(dest, folder, generation, fence)
            published = True
        finally:
            if not published:
                shutil.rmtree(folder, ignore_errors=True)

    def _current(self, dest: Path) -> tuple[str | None, int | None]:
        """(current version folder name, its generation): (None, 0) for an older-layout folder, (None, None) if absent."""
        if dest.is_symlink():
            name = Path(os.readlink(dest)).name
            return name, generation_of(name) or 0
        return (None, 0) if dest.exists() else (None, None)

    def _swap(self, dest: Path, folder: Path, generation: int, fence: Fence | None) -> None:
        """Point `dest` at the complete version `folder` (compare-before-write under the lock), then collect."""
        versions = _versions(dest)
        what = f"publishing {dest}"
        with _locked(dest):
            self.check_fence(fence, what)
            old, current = self._current(dest)
            check_generation(current, generation, fenced=fence is not None, what=what)
            if not folder.is_dir():
                raise StoreError(f"{what}: the new version was removed by another writer; nothing was published")
            if dest.exists() and not dest.is_symlink():
                # An older-layout folder: moved aside, then the link takes its place (two renames; only a
                # crash between them hides it, and it is still whole under the versions folder).
                old = version_name(0)
                os.replace(dest, versions / old)
            link = dest.parent / f".{dest.name}.link-{uuid.uuid4().hex[:8]}"
            os.symlink(os.path.join(versions.name, folder.name), link)
            os.replace(link, dest)
            _fsync_dir(dest.parent)
            # Published. Collecting is housekeeping: a failure there must not undo the publish.
            try:
                for name in superseded((p.name for p in versions.iterdir()), folder.name, old, generation):
                    shutil.rmtree(versions / name, ignore_errors=True)
            except OSError as err:
                log.warning("%s: superseded versions not collected (%s); the next publish retries", dest, err)

    def _resolved(self, key: str) -> Path:
        """The folder of the current version (resolving the link once, so that a reader stays on it)."""
        return self.path(key).resolve()

    def open_checkpoint(self, key: str, *, verify_hashes: bool = True) -> Path:
        folder = self._resolved(key)
        verify(folder, hashes=verify_hashes)
        return folder

    def verify_checkpoint(self, key: str) -> Manifest:
        return verify(self._resolved(key), hashes=True)

    # -- small objects
    def put_bytes(self, key: str, data: bytes, *, fence: Fence | None = None) -> None:
        dest = self.path(key)
        if fence is None:
            self._write(dest, data)
            return
        # Fenced: the lease check and the rename under the object's lock, which every fenced writer of it
        # takes. A newer attempt writes only after its claim, so once it has written, an older attempt that
        # takes the lock finds the newer lease and is refused: it cannot land over a newer attempt's object,
        # even when frozen between its check and its write (it then holds the lock: the newer one waits).
        with _locked(dest):
            self.check_fence(fence, f"writing {dest}")
            self._write(dest, data)

    @staticmethod
    def _write(dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = self.get_bytes(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> None:
        dest = self.path(key)
        with _locked(dest):
            current = self.get_versioned(key)
            if (current[1] if current else None) != etag:
                raise WriteConflict(f"{dest} changed since it was read")
            self._write(dest, data)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        out = []
        # Checkpoint keys are links to their current version: followed, so each file appears once,
        # under the key. Version, staging and trash folders (names starting with '.') are not listed.
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                if f.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(root, f), self.root)
                out.append(rel.replace(os.sep, "/"))
        return sorted(out)

    def folders(self, prefix: str) -> list[str]:
        base = self.path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete_prefix(self, prefix: str) -> int:
        target = self.path(prefix)
        n = len(self.list(prefix))
        if target.is_symlink() or target.is_file():  # a checkpoint: the link goes first, so it is never seen half-deleted
            target.unlink()
        elif target.is_dir():
            # Rename first so that a crash mid-delete never leaves a half-deleted checkpoint that looks whole.
            trash = target.parent / f".{target.name}.deleting-{uuid.uuid4().hex[:8]}"
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(_versions(target), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (target.parent / f".{target.name}.lock").unlink()
        return n


__all__ = ["FileStore"]
