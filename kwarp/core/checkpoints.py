"""Checkpoints: a Hugging Face model folder plus MANIFEST.json, written last.

A checkpoint exists if and only if its manifest exists and verifies. Writers fill a temporary
sibling folder, write the manifest, then rename the folder into place, so a reader never sees a
half-written checkpoint. Weights are read only from safetensors, shard by shard through the
index; nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch and safetensors are imported where tensors are touched, not at module import: the operator
# and the store CLIs only hash files and read manifests, and start in a fraction of the time.

MANIFEST = "MANIFEST.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SHARD = "model.safetensors"
MANIFEST_VERSION = 1
# Files a pickle could hide in. Their presence makes a folder unloadable by kwarp.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_CHUNK = 8 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted, or holds weights kwarp refuses to load."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "files": [e.__dict__ for e in self.files],
                "meta": self.meta,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            raw = json.loads(text)
            files = tuple(FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in raw["files"])
            return cls(files=files, meta=dict(raw.get("meta", {})), version=int(raw.get("version", 1)))
        except (ValueError, KeyError, TypeError) as err:
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
            if rel != MANIFEST:
                names.append(rel.replace(os.sep, "/"))
    return sorted(names)


def build_manifest(folder: Path, meta: dict[str, Any] | None = None) -> Manifest:
    folder = Path(folder)
    entries = tuple(
        FileEntry(name, (folder / name).stat().st_size, sha256_file(folder / name)) for name in _walk(folder)
    )
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


def shard_map(folder: Path) -> dict[str, list[str]]:
    """{shard file name: [tensor names in file order]} for a HF folder, sharded or not."""
    folder = Path(folder)
    refuse_pickles(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        return dict(sorted(shards.items()))
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    out = {}
    for f in files:
        from safetensors import safe_open

        with safe_open(folder / f, framework="pt") as sf:
            out[f] = list(sf.keys())
    return out


def tensor_index(folder: Path) -> dict[str, str]:
    """{tensor name: shard file name}."""
    return {name: shard for shard, names in shard_map(folder).items() for name in names}


def iter_tensors(folder: Path, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one shard at a time; with `names`, only those, grouped by shard."""
    folder = Path(folder)
    wanted = set(names) if names is not None else None
    for shard, shard_names in shard_map(folder).items():
        todo = [n for n in shard_names if wanted is None or n in wanted]
        if not todo:
            continue
        from safetensors import safe_open

        with safe_open(folder / shard, framework="pt") as sf:
            for n in todo:
                yield n, sf.get_tensor(n)


class TensorReader:
    """Random access to the tensors of a checkpoint, opening each shard lazily (memory-mapped)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = tensor_index(self.folder)
        self._handles: dict[str, Any] = {}

    def names(self) -> list[str]:
        return list(self.index)

    def get(self, name: str) -> torch.Tensor:
        shard = self.index[name]
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(self.folder / shard, framework="pt")
            self._handles[shard] = handle
        return handle.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardWriter:
    """Write tensors into safetensors shards of bounded size, then the HF index.

    Memory held is at most one shard's worth of tensors. Shard names follow the HF convention
    model-00001-of-0000N.safetensors; they are renamed once N is known.
    """

    def __init__(self, folder: Path, max_shard_bytes: int = 2 << 30, metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self.flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += nbytes
        self._total += nbytes

    def flush(self) -> None:
        if not self._pending:
            return
        tmp_name = f"shard-{len(self._shards):05d}.tmp.safetensors"
        from safetensors.torch import save_file

        save_file(self._pending, str(self.folder / tmp_name), metadata=self.metadata)
        self._shards.append((tmp_name, list(self._pending)))
        self._pending = {}
        self._pending_bytes = 0

    def close(self) -> list[str]:
        """Finish writing; return the final shard file names."""
        self.flush()
        n = len(self._shards)
        if n == 0:
            raise CheckpointError(f"{self.folder}: no tensors were written")
        if n == 1:
            os.replace(self.folder / self._shards[0][0], self.folder / SINGLE_SHARD)
            return [SINGLE_SHARD]
        weight_map: dict[str, str] = {}
        finals = []
        for k, (tmp_name, names) in enumerate(self._shards):
            final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / tmp_name, self.folder / final)
            finals.append(final)
            for name in names:
                weight_map[name] = final
        index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
        (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        return finals


# Files of a HF model folder that are not weights: config, generation config, tokenizer.
def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    src, dst = Path(src), Path(dst)
    copied = []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name == MANIFEST or p.name == SAFETENSORS_INDEX:
            continue
        if p.suffix == ".safetensors" or p.suffix in PICKLE_SUFFIXES or p.name.startswith("."):
            continue
        shutil.copy2(p, dst / p.name)
        copied.append(p.name)
    return copied


def save_state_dict(
    state: dict[str, torch.Tensor],
    dest: Path,
    *,
    template: Path | None = None,
    meta: dict[str, Any] | None = None,
    max_shard_bytes: int = 2 << 30,
) -> Manifest:
    """Publish a state dict as a checkpoint (non-weight files copied from `template`)."""
    with staging(dest) as tmp:
        writer = ShardWriter(tmp, max_shard_bytes=max_shard_bytes)
        for name, t in state.items():
            writer.add(name, t)
        writer.close()
        if template is not None:
            copy_non_weight_files(template, tmp)
        manifest = write_manifest(tmp, {"created": time.time(), **(meta or {})})
    return manifest


def save_pretrained(model: Any, dest: Path, *, tokenizer: Any = None, meta: dict[str, Any] | None = None) -> Manifest:
    """Publish a transformers model (and tokenizer) as a checkpoint, safetensors only."""
    with staging(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for p in tmp.iterdir():
            if p.suffix in PICKLE_SUFFIXES:
                p.unlink()
        manifest = write_manifest(tmp, {"created": time.time(), **(meta or {})})
    return manifest
