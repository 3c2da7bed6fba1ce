"""The file:// store: a folder on a local or shared file system."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kwarp.core.checkpoints import (
    MANIFEST,
    CheckpointError,
    Manifest,
    publish,
    read_manifest,
    staging,
    verify,
    write_manifest,
)
from kwarp.store.base import Store, StoreError


def _check_key(key: str) -> str:
    parts = key.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key '{key}'")
    return "/".join(parts)


class FileStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    # -- checkpoints
    def has_checkpoint(self, key: str) -> bool:
        folder = self.path(key)
        try:
            verify(folder, hashes=False)
        except (CheckpointError, OSError):
            return False
        return True

    def read_manifest(self, key: str) -> Manifest | None:
        try:
            return read_manifest(self.path(key))
        except CheckpointError:
            return None

    def put_checkpoint(self, local_dir: Path, key: str) -> Manifest:
        local_dir = Path(local_dir)
        dest = self.path(key)
        with staging(dest) as tmp:
            for item in local_dir.iterdir():
                if item.name == MANIFEST:
                    continue
                if item.is_dir():
                    shutil.copytree(item, tmp / item.name)
                else:
                    shutil.copy2(item, tmp / item.name)
            if (local_dir / MANIFEST).is_file():
                shutil.copy2(local_dir / MANIFEST, tmp / MANIFEST)
                manifest = verify(tmp, hashes=True)
            else:
                manifest = write_manifest(tmp)
        return manifest

    @contextmanager
    def write_checkpoint(self, key: str, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        # Write straight into a staging sibling inside the store: publishing is one rename.
        with staging(self.path(key)) as tmp:
            yield tmp
            write_manifest(tmp, meta)

    def open_checkpoint(self, key: str, *, verify_hashes: bool = True) -> Path:
        folder = self.path(key)
        verify(folder, hashes=verify_hashes)
        return folder

    def verify_checkpoint(self, key: str) -> Manifest:
        return verify(self.path(key), hashes=True)

    # -- small objects
    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self.path(key)
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

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        out = []
        for root, dirs, files in os.walk(base):
            # Staging and trash folders are invisible: they are not (yet, or any more) checkpoints.
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                if f.startswith("."):
                    continue
                out.append(os.path.relpath(os.path.join(root, f), self.root).replace(os.sep, "/"))
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        target = self.path(prefix)
        if target.is_file():
            target.unlink()
            return 1
        if not target.is_dir():
            return 0
        n = sum(len(files) for _, _, files in os.walk(target))
        # Rename first so that a crash mid-delete never leaves a half-deleted checkpoint that looks whole.
        trash = target.parent / f".{target.name}.deleting-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return n


__all__ = ["FileStore", "publish"]
