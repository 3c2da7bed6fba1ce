"""Resolve the locations a WarpRun names (models, prompt files) to local paths.

    /abs/path, relative/path, file:///abs/path   used in place
    s3://bucket/key                              a checkpoint (key/MANIFEST.json) is fetched verified
                                                 into the digest-keyed cache; a plain object to a file
    hf://org/name[@revision]                     a Hugging Face Hub snapshot, safetensors and text only

Nothing here loads weights; it only makes files local. Pickled weights are never downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kwarp.core.errors import UserError

if TYPE_CHECKING:
    from kwarp.core.spec import StorageSpec

# What a model snapshot from the Hub may bring: weights in safetensors, configs, tokenizer files.
HF_ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "*.tiktoken"]


def cache_root() -> Path:
    return Path(os.environ.get("KWARP_CACHE", Path.home() / ".cache" / "kwarp")).expanduser()


def is_remote(location: str) -> bool:
    return location.startswith(("s3://", "hf://"))


def local_path(location: str, field: str) -> Path:
    """A local location as a Path; raise a UserError naming the spec field if it is missing."""
    path = Path(location[len("file://") :] if location.startswith("file://") else location).expanduser()
    if not path.exists():
        raise UserError(f"{field}: '{location}' does not exist; fix the path in the WarpRun document")
    return path


def fetch(location: str, field: str, storage: StorageSpec | None = None, revision: str | None = None) -> Path:
    """A local path holding what `location` names (downloaded and cached when remote)."""
    if location.startswith("s3://"):
        return _fetch_s3(location, field, storage)
    if location.startswith("hf://"):
        return _fetch_hf(location, field, revision)
    return local_path(location, field)


def _fetch_s3(location: str, field: str, storage: StorageSpec | None) -> Path:
    from kwarp.core.checkpoints import MANIFEST
    from kwarp.store import open_store

    bucket, _, key = location[len("s3://") :].partition("/")
    key = key.strip("/")
    store = open_store(f"s3://{bucket}", storage)
    if store.exists(f"{key}/{MANIFEST}"):
        return store.open_checkpoint(key)
    data = store.get_bytes(key)
    if data is None:
        raise UserError(f"{field}: '{location}' does not exist (neither a checkpoint nor an object)")
    digest = hashlib.sha256(data).hexdigest()
    dest = cache_root() / "objects" / digest[:2] / f"{digest}-{Path(key).name}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return dest


def _fetch_hf(location: str, field: str, revision: str | None) -> Path:
    repo = location[len("hf://") :]
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - transformers depends on huggingface_hub
        raise UserError(f"{field}: hf:// locations need huggingface_hub ({err})") from None
    try:
        path = snapshot_download(repo_id=repo, revision=revision, allow_patterns=HF_ALLOW_PATTERNS)
    except Exception as err:  # the hub client raises many types; all mean the same to the user
        raise UserError(
            f"{field}: cannot download '{location}' from the Hugging Face Hub ({type(err).__name__}: {err}); "
            "check the name, HF_TOKEN for gated models, and network access, or copy the model into the store "
            "with `kwarp store cp`"
        ) from None
    return Path(path)
