"""Stores: where checkpoints live. `open_store(url)` picks the backend from the URL scheme."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kwarp.store import layout
from kwarp.store.base import Store, StoreError
from kwarp.store.local import FileStore

if TYPE_CHECKING:
    from kwarp.core.spec import StorageSpec


def open_store(url: str, storage: StorageSpec | None = None) -> Store:
    """A store for a URL: a plain path or file:///abs/path, or s3://bucket/prefix."""
    if url.startswith("s3://"):
        try:
            from kwarp.store.s3 import S3Store
        except ImportError as err:  # pragma: no cover - the S3 backend ships with kwarp
            raise StoreError(f"the s3:// store is unavailable: {err}") from None
        return S3Store.from_url(url, storage)
    if url.startswith("file://"):
        return FileStore(url[len("file://") :])
    if "://" in url:
        raise StoreError(f"unsupported store URL '{url}': use a path, file:///abs/path or s3://bucket/prefix")
    return FileStore(Path(url))


__all__ = ["FileStore", "Store", "StoreError", "layout", "open_store"]
