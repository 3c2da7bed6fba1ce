"""The store interface: checkpoints and small JSON documents under one root, by the storage layout."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kwarp.core.checkpoints import Manifest


class StoreError(RuntimeError):
    """The store cannot be reached or refused an operation; the message says which setting to check."""


class Store(ABC):
    """Checkpoints are published atomically: visible only once complete (MANIFEST.json written last)."""

    url: str

    # -- checkpoints
    @abstractmethod
    def has_checkpoint(self, key: str) -> bool:
        """True iff the checkpoint's manifest exists (and its files are present with the listed sizes)."""

    @abstractmethod
    def read_manifest(self, key: str) -> Manifest | None: ...

    @abstractmethod
    def put_checkpoint(self, local_dir: Path, key: str) -> Manifest:
        """Publish a local folder (manifest computed if absent). Files first, manifest last."""

    @abstractmethod
    def open_checkpoint(self, key: str, *, verify_hashes: bool = True) -> Path:
        """A local, verified folder holding the checkpoint (in place for file://, cached for s3://)."""

    @abstractmethod
    def verify_checkpoint(self, key: str) -> Manifest:
        """Re-hash every file of the checkpoint against its manifest; raise CheckpointError on mismatch."""

    @contextmanager
    def write_checkpoint(self, key: str, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a local folder to fill; on success the folder is published at `key`."""
        import tempfile

        from kwarp.core.checkpoints import write_manifest

        with tempfile.TemporaryDirectory(prefix="kwarp-ckpt-") as tmp:
            yield Path(tmp)
            write_manifest(Path(tmp), meta)
            self.put_checkpoint(Path(tmp), key)

    # -- small objects
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically (readers see the old or the new content, never a mix)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of all objects under prefix, recursively, sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under prefix; return how many. Idempotent."""

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def get_json(self, key: str) -> Any | None:
        data = self.get_bytes(key)
        return None if data is None else json.loads(data)

    def describe(self) -> str:
        return self.url
