"""The weights of a checkpoint: safetensors shards read tensor by tensor, written shard by shard.

Reading goes through the safetensors index, one shard at a time; a folder whose weights exist only
as pickles is refused. Writers produce an ordinary Hugging Face folder; the checkpoint's manifest
(kwarp.core.checkpoints) is written last. The operator never imports this module (it needs torch).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kwarp.core.checkpoints import (
    MANIFEST,
    PICKLE_SUFFIXES,
    SAFETENSORS_INDEX,
    SINGLE_SHARD,
    CheckpointError,
    Manifest,
    refuse_pickles,
    staging,
    write_manifest,
)

if TYPE_CHECKING:
    import torch


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
