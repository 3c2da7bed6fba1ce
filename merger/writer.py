"""The output of a merge: safetensors shards laid out before the first tensor is computed, written as tensors
arrive, hashed while written.

The merge knows every output tensor (name, dtype, shape) and the order it computes them in, so the
shard boundaries, each shard's header and the final file names can be fixed up front. Each tensor
then goes to its place as soon as it is computed: no shard is held in memory, no file is renamed, and
its sha256 is taken from the bytes as they are written (kwarp.core.checkpoints.record_digests hands it
to the manifest, so nothing is read back to hash it). Writing runs on a thread of its own, so the disk
works while the next group is computed; at most `queue_bytes` of computed tensors wait for it.

A file written here is an ordinary safetensors file: an 8-byte little-endian header length, the
JSON header (padded with spaces to 8 bytes), then the tensors' bytes back to back in header order.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kwarp.core.checkpoints import SAFETENSORS_INDEX, SINGLE_SHARD, CheckpointError, record_digests

_TAGS = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_SIZES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def element_size(tag: str) -> int:
    return _SIZES.get(tag, 1)  # BOOL, I8, U8 and the float8 formats


@dataclass(frozen=True)
class Planned:
    """One output tensor: its name, safetensors dtype tag and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = element_size(self.dtype)
        for d in self.shape:
            n *= d
        return n


def plan_shards(tensors: Sequence[Planned], max_shard_bytes: int) -> list[list[Planned]]:
    """Consecutive tensors into shards of at most max_shard_bytes (a larger tensor gets a shard of its own)."""
    shards: list[list[Planned]] = []
    size = 0
    for t in tensors:
        if not shards or (shards[-1] and size + t.nbytes > max_shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def header_bytes(shard: Sequence[Planned], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header of a shard holding `shard` in this order."""
    doc: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t in shard:
        doc[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class _File:
    """One shard being written: its descriptor, running sha256 and size."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.sha.update(data)  # hashlib releases the GIL on large buffers, as os.write does
        written = 0
        while written < len(data):
            written += os.write(self.fd, data[written:])
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


_STOP = object()


class PlannedShardWriter:
    """Writes `tensors` (in this order, each exactly once) into shards under `folder`, then the index.

    `write` hands a tensor (or `write_piece` a piece of one) to the writer thread and returns; at most
    `queue_bytes` wait for the thread (a larger tensor goes alone). `close` waits for the thread, writes the
    index (for more than one shard) and records every shard's sha256 for the manifest. An error of
    the thread is raised by the next `write` or by `close`.
    """

    def __init__(self, folder: Path, tensors: Sequence[Planned], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None, queue_bytes: int = 256 << 20):
        if not tensors:
            raise CheckpointError(f"{folder}: no tensors to write")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(tensors, max_shard_bytes)
        n = len(self.shards)
        self.names = [SINGLE_SHARD] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self._order = [(k, t) for k, shard in enumerate(self.shards) for t in shard]
        self._next = 0  # the planned tensor that comes next
        self._offset = 0  # bytes of it already given in pieces
        self._digests: dict[str, str] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queue_bytes = queue_bytes
        self._waiting = 0  # bytes handed to the thread and not yet written
        self._room = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kwarp-merge-writer", daemon=True)
        self._thread.start()

    def write(self, name: str, tensor: torch.Tensor, written: Callable[[torch.Tensor], None] | None = None) -> None:
        """Queue `tensor` to be written as `name`; the thread calls `written(tensor)` once its bytes are in the file
        (to recycle its buffer: kwarp.merger.buffers)."""
        planned = self._planned(name, tensor.dtype)
        if self._offset or tuple(tensor.shape) != planned.shape:
            raise CheckpointError(f"{self.folder}: expected '{planned.name}' {planned.dtype}{list(planned.shape)} "
                                  f"whole, got {list(tensor.shape)}" + (" after pieces of it" if self._offset else ""))
        self._next += 1
        self._put(tensor, planned.nbytes, written)

    def write_piece(self, name: str, piece: torch.Tensor, written: Callable[[torch.Tensor], None] | None = None) -> None:
        """Queue the next piece of tensor `name`: flat, of its dtype; its pieces, in order, are exactly its bytes.

        The engine computes a large tensor piece by piece into a few recycled buffers, instead of into
        one buffer of the whole tensor.
        """
        planned = self._planned(name, piece.dtype)
        nbytes = piece.numel() * piece.element_size()
        if piece.dim() != 1 or self._offset + nbytes > planned.nbytes:
            raise CheckpointError(f"{self.folder}: a piece of {nbytes} bytes at byte {self._offset} does not fit "
                                  f"'{name}' ({planned.nbytes} bytes)")
        self._offset += nbytes
        if self._offset == planned.nbytes:
            self._next, self._offset = self._next + 1, 0
        self._put(piece, nbytes, written)

    def _planned(self, name: str, dtype: torch.dtype) -> Planned:
        if self._error is not None:
            raise self._error
        if self._next >= len(self._order):
            raise CheckpointError(f"'{name}' was not planned for {self.folder}")
        _, planned = self._order[self._next]
        tag = _TAGS.get(dtype)
        if name != planned.name or tag != planned.dtype:
            raise CheckpointError(f"{self.folder}: expected '{planned.name}' {planned.dtype}{list(planned.shape)} "
                                  f"next, got '{name}' {tag}")
        return planned

    def _put(self, tensor: torch.Tensor, nbytes: int, written: Callable[[torch.Tensor], None] | None) -> None:
        with self._room:  # a tensor larger than the budget goes alone
            while self._error is None and self._waiting and self._waiting + nbytes > self._queue_bytes:
                self._room.wait()
            if self._error is not None:
                raise self._error
            self._waiting += nbytes
        self._queue.put((tensor.detach().contiguous(), nbytes, written))

    def close(self) -> list[str]:
        """Finish writing; return the shard file names."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._next != len(self._order):  # (a tensor of which only pieces came counts as missing)
            missing = self._order[self._next][1].name
            raise CheckpointError(f"{self.folder}: closed before '{missing}' and {len(self._order) - self._next - 1} more")
        if len(self.names) > 1:
            weight_map = {t.name: self.names[k] for k, t in self._order}
            total = sum(t.nbytes for _, t in self._order)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        record_digests(self.folder, self._digests)
        return list(self.names)

    def abort(self) -> None:
        """Stop the thread after an error elsewhere (the folder is the caller's to remove)."""
        self._error = self._error or CheckpointError("aborted")
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        current: _File | None = None
        shard = -1
        try:
            for k, planned in self._order:
                left = planned.nbytes
                while True:  # one item for a whole tensor (even of 0 bytes), or its pieces
                    item = self._queue.get()
                    if item is _STOP or self._error is not None:
                        return
                    tensor, nbytes, written = item
                    if k != shard:
                        if current is not None:
                            self._finish(current)
                        shard = k
                        current = _File(self.folder / self.names[k])
                        current.write(memoryview(header_bytes(self.shards[k], self.metadata)))
                    assert current is not None
                    data = tensor.reshape(-1).view(torch.uint8).numpy() if nbytes else b""
                    current.write(memoryview(data).cast("B"))
                    del data
                    if written is not None:
                        written(tensor)
                    del tensor, written
                    with self._room:
                        self._waiting -= nbytes
                        self._room.notify_all()
                    left -= nbytes
                    if left <= 0:
                        break
            if current is not None:
                self._finish(current)
                current = None
            self._queue.get()  # the stop marker
        except BaseException as err:  # handed to the caller's thread
            with self._room:
                self._error = err
                self._room.notify_all()
            if current is not None:
                current.close()

    def _finish(self, f: _File) -> None:
        f.close()
        self._digests[f.path.name] = f.sha.hexdigest()
