"""Checkpoints: a Hugging Face model folder plus MANIFEST.json, written last.

A checkpoint exists if and only if its manifest exists and verifies. Writers fill a temporary
sibling folder, write the manifest, then rename the folder into place, so a reader never sees a
half-written checkpoint. Weights are read only from safetensors, shard by shard through the
index; nothing here ever unpickles.

This module is torch-free (the operator imports it); reading and writing the tensors themselves is
kwarp.core.weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# torch and safetensors are imported where tensors are touched, not at module import: the operator
# and the store CLIs only hash files and read manifests, and start in a fraction of the time.

MANIFEST = "MANIFEST.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SHARD = "model.safetensors"
# The merger writes its outputs in shards of at most this size (laid out in advance and written as tensors
# arrive: no shard is held in memory). Here, torch-free, so that `kwarp merge --help` can show it.
DEFAULT_MAX_SHARD_BYTES = 256 << 20
MANIFEST_VERSION = 1
# Files a pickle could hide in. Their presence makes a folder unloadable by kwarp.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_CHUNK = 8 << 20
# sha256 of files a writer hashed while writing them (record_digests), for the manifest; consumed and
# removed by build_manifest, so never part of a checkpoint.
DIGESTS = ".kwarp-digests.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted, or holds weights kwarp refuses to load."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str
    # Where a store keeps the file (relative to the checkpoint's key) and the object's ETag there: set in the
    # pointer an s3:// store publishes (kwarp.store.versions), absent in a local folder's manifest. They say
    # where the bytes are, not what they are: equality and the digest ignore them.
    object: str | None = field(default=None, compare=False)
    etag: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "size": self.size, "sha256": self.sha256}
        if self.object is not None:
            out["object"] = self.object
        if self.etag is not None:
            out["etag"] = self.etag
        return out


@dataclass(frozen=True)
class Placement:
    """Which published version of a checkpoint a store's pointer names (kwarp.store.versions)."""

    version: str
    generation: int
    writer: str | None = None


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    placement: Placement | None = field(default=None, compare=False)

    def to_json(self) -> str:
        doc: dict[str, Any] = {"version": self.version, "files": [e.to_dict() for e in self.files], "meta": self.meta}
        if self.placement is not None:
            doc["placement"] = {k: v for k, v in self.placement.__dict__.items() if v is not None}
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            raw = json.loads(text)
            files = tuple(
                FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"]),
                          object=str(f["object"]) if f.get("object") else None,
                          etag=str(f["etag"]) if f.get("etag") else None)
                for f in raw["files"]
            )  # fmt: skip
            where = raw.get("placement")
            placement = (
                Placement(str(where["version"]), int(where.get("generation") or 0), where.get("writer"))
                if isinstance(where, dict) and where.get("version")
                else None
            )
            return cls(files=files, meta=dict(raw.get("meta", {})), version=int(raw.get("version", 1)),
                       placement=placement)  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"malformed {MANIFEST}: {err}") from None

    @property
    def digest(self) -> str:
        """Identity of the checkpoint's content (used as a cache key)."""
        h = hashlib.sha256()
        for e in sorted(self.files, key=lambda e: e.name):
            h.update(f"{e.name}\0{e.size}\0{e.sha256}\n".encode())
        return h.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(folder: Path) -> list[str]:
    names = []
    for root, _dirs, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), folder)
            if rel not in (MANIFEST, DIGESTS):
                names.append(rel.replace(os.sep, "/"))
    return sorted(names)


def record_digests(folder: Path, digests: dict[str, str]) -> None:
    """Remember the sha256 of files just written into `folder` (hashed from the bytes as they were written),
    so that the manifest does not read them again. Each is tied to the file's size, inode and
    modification time now: a file changed since is hashed again by build_manifest."""
    folder = Path(folder)
    path = folder / DIGESTS
    known = json.loads(path.read_text()) if path.is_file() else {}
    for name, sha in digests.items():
        st = (folder / name).stat()
        known[name] = {"sha256": sha, "size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}
    tmp = folder / f"{DIGESTS}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(known))
    os.replace(tmp, path)


def _recorded_digests(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        known = json.loads((folder / DIGESTS).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _entry(folder: Path, name: str, known: dict[str, dict[str, Any]]) -> FileEntry:
    st = (folder / name).stat()
    rec = known.get(name)
    if rec and (rec.get("size"), rec.get("inode"), rec.get("mtime_ns")) == (st.st_size, st.st_ino, st.st_mtime_ns):
        return FileEntry(name, st.st_size, str(rec["sha256"]))
    return FileEntry(name, st.st_size, sha256_file(folder / name))


def build_manifest(folder: Path, meta: dict[str, Any] | None = None) -> Manifest:
    """The manifest of a folder: every file's size and sha256 (taken from record_digests where it still holds)."""
    folder = Path(folder)
    known = _recorded_digests(folder)
    entries = tuple(_entry(folder, name, known) for name in _walk(folder))
    return Manifest(files=entries, meta=dict(meta or {}))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(folder: Path, meta: dict[str, Any] | None = None) -> Manifest:
    """Hash every file, then write MANIFEST.json atomically (tmp + fsync + rename), last."""
    folder = Path(folder)
    manifest = build_manifest(folder, meta)
    tmp = folder / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    (folder / DIGESTS).unlink(missing_ok=True)  # the manifest holds them now
    _fsync_dir(folder)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; the checkpoint is absent or was never completed")
    return Manifest.from_json(path.read_bytes())


def verify(folder: Path, *, hashes: bool = True) -> Manifest:
    """Check every file against the manifest. With hashes=False only sizes are compared (fast)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for e in manifest.files:
        p = folder / e.name
        if not p.is_file():
            raise CheckpointError(f"{folder}: '{e.name}' listed in {MANIFEST} is missing")
        size = p.stat().st_size
        if size != e.size:
            raise CheckpointError(f"{folder}: '{e.name}' has {size} bytes, the manifest says {e.size}")
        if hashes and sha256_file(p) != e.sha256:
            raise CheckpointError(f"{folder}: '{e.name}' does not match its sha256 in {MANIFEST} (corrupted)")
    return manifest


def is_complete(folder: Path, *, hashes: bool = False) -> bool:
    try:
        verify(folder, hashes=hashes)
    except (CheckpointError, OSError):
        return False
    return True


@contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `dest` atomically, on error it is removed.

    The caller writes files into the yielded folder and must call write_manifest on it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise CheckpointError(f"{dest}: staging finished without a {MANIFEST}; nothing was published")
        publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, dest: Path) -> None:
    """Move a complete staging folder to dest; an older folder at dest is replaced (never merged)."""
    if dest.exists():
        trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, trash)
        os.replace(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    _fsync_dir(dest.parent)


# ---------------------------------------------------------------- safetensors access


def refuse_pickles(folder: Path) -> None:
    """kwarp loads safetensors only: a folder whose weights exist only as pickles is an error."""
    folder = Path(folder)
    has_safetensors = any(folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not has_safetensors:
        hint = f" (found pickle files {pickles}; convert them to safetensors first)" if pickles else ""
        raise CheckpointError(f"{folder}: no *.safetensors weights{hint}; kwarp never loads pickled weights")
