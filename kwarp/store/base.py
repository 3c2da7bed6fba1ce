"""The store interface: checkpoints and small JSON documents under one root, by the storage layout."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kwarp.core.checkpoints import Manifest

if TYPE_CHECKING:
    from kwarp.store.fencing import Fence


class StoreError(RuntimeError):
    """The store cannot be reached or refused an operation; the message says which setting to check."""


class StoreUnreachable(StoreError):
    """The store's endpoint did not answer (network fault, timeout, 5xx) within the bounded retries."""


class WriteConflict(StoreError):
    """A compare-and-swap write found the object changed (or created) since it was read."""


class FencedOut(StoreError):
    """A newer attempt of the same task has taken over: this one must stop without publishing."""


class Store(ABC):
    """Checkpoints are published atomically and never at the cost of the previous version.

    A publish writes a new version beside the current one, then swaps one pointer (the S3 manifest, a
    file:// symbolic link), then collects superseded versions (kwarp.store.versions). A writer may pass
    its fencing token (kwarp.store.fencing.Fence): a stale attempt then cannot publish over a newer one.
    """

    url: str

    # -- checkpoints
    @abstractmethod
    def has_checkpoint(self, key: str) -> bool:
        """True iff the checkpoint's manifest exists and every file it lists is present as it was published
        (size, and on S3 the ETag recorded in the pointer), without reading the files."""

    @abstractmethod
    def read_manifest(self, key: str) -> Manifest | None: ...

    @abstractmethod
    def put_checkpoint(self, local_dir: Path, key: str, *, fence: Fence | None = None) -> Manifest:
        """Publish a local folder (manifest computed if absent) as a new version of `key`, pointer last."""

    @abstractmethod
    def open_checkpoint(self, key: str, *, verify_hashes: bool = True) -> Path:
        """A local, verified folder holding the checkpoint (in place for file://, cached for s3://)."""

    @abstractmethod
    def verify_checkpoint(self, key: str) -> Manifest:
        """Re-hash every file of the checkpoint against its manifest; raise CheckpointError on mismatch."""

    @contextmanager
    def write_checkpoint(
        self, key: str, meta: dict[str, Any] | None = None, *, fence: Fence | None = None
    ) -> Iterator[Path]:
        """Yield a local folder to fill; on success the folder is published at `key`."""
        import tempfile

        from kwarp.core.checkpoints import write_manifest

        with tempfile.TemporaryDirectory(prefix="kwarp-ckpt-") as tmp:
            yield Path(tmp)
            write_manifest(Path(tmp), meta)
            self.put_checkpoint(Path(tmp), key, fence=fence)

    # -- small objects
    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, fence: Fence | None = None) -> None:
        """Write an object atomically (readers see the old or the new content, never a mix). With a fence,
        nothing is written once a newer attempt holds the task's lease (FencedOut)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None if it does not exist."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(content, version tag) of an object, or None: the tag to pass to put_if."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, *, etag: str | None) -> None:
        """Compare-and-swap: write only if the object still has version tag `etag` (None: only if it does
        not exist). Raise WriteConflict otherwise."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of all objects under prefix, recursively, sorted."""

    @abstractmethod
    def folders(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of `prefix` (one level, sorted)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under prefix; return how many. Idempotent."""

    def put_json(self, key: str, obj: Any, *, fence: Fence | None = None) -> None:
        self.put_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode(), fence=fence)

    def get_json(self, key: str) -> Any | None:
        data = self.get_bytes(key)
        return None if data is None else json.loads(data)

    def describe(self) -> str:
        return self.url

    def check_fence(self, fence: Fence | None, what: str) -> None:
        if fence is not None:
            from kwarp.store.fencing import check

            check(self, fence, what)
