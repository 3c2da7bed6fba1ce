"""Reading a merge's inputs one group at a time: every tensor read once, with pread, into memory the engine owns.

The engine needs each tensor of a group twice (for the Gram matrix, then for the weighted sum). Held
in memory, a group is read from disk (or the page cache) once; memory-mapped windows re-read it and
fault in every page on each pass. Reading is a plain pread into a tensor's buffer: the GIL is
released for the copy, so a prefetch thread reads the next group while the workers compute this one.
The safetensors headers are parsed here (8-byte length, JSON) to find each tensor's bytes.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from kwarp.core.checkpoints import CheckpointError
from kwarp.core.weights import TensorReader, shard_map

_TORCH = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_READ = 64 << 20
# Inputs too large to hold are mapped in windows of this size (per input).
WINDOW_BYTES = 16 << 20  # bytes per pread call (Linux returns at most about 2 GiB per call anyway)


@dataclass(frozen=True)
class Located:
    """Where a tensor's bytes are: file, absolute offset, length; and what they are."""

    path: Path
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


def locate(folder: Path) -> dict[str, Located]:
    """Every tensor of a checkpoint folder, from its shards' headers (no tensor data is read)."""
    out: dict[str, Located] = {}
    for shard in shard_map(Path(folder)):
        path = Path(folder) / shard
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(f.read(n))
            except ValueError as err:
                raise CheckpointError(f"{path}: unreadable safetensors header ({err})") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            out[name] = Located(path, 8 + n + int(start), int(end) - int(start), str(info["dtype"]),
                                tuple(int(d) for d in info["shape"]))
    return out


def readable(tag: str) -> bool:
    return tag in _TORCH


class Held:
    """A group's tensors, {name: tensor} per input in input order, and the buffers under them."""

    def __init__(self, tensors: list[dict[str, torch.Tensor]], buffers: list[torch.Tensor]):
        self.tensors = tensors
        self.buffers = buffers


class GroupReader:
    """Reads named tensors of several checkpoints into buffers it recycles; keeps each shard open until close.

    Buffers of a group handed back with `recycle` are reused for later tensors of the same byte size (the
    blocks of a model are alike): fresh memory would cost a page fault and a zeroed page per 4 KiB. At most
    `pool_bytes` wait for reuse, the most recently recycled first.
    """

    def __init__(self, folders: list[Path], pool_bytes: int = 384 << 20):
        self.maps = [locate(f) for f in folders]
        self.bytes_read = 0
        self.pool_bytes = pool_bytes
        self._fds: dict[Path, int] = {}
        self._free: list[torch.Tensor] = []  # recycled buffers, oldest first
        self._pooled = 0
        self._lock = threading.Lock()

    def nbytes(self, names: list[str]) -> int:
        """Bytes of these tensors over every input."""
        return sum(m[n].nbytes for m in self.maps for n in names)

    def read(self, names: list[str]) -> Held:
        buffers: list[torch.Tensor] = []
        tensors = [{n: self._read(m[n], buffers) for n in names} for m in self.maps]
        return Held(tensors, buffers)

    def recycle(self, held: Held) -> None:
        """The group's tensors are no longer used by anyone: their buffers may be read into again."""
        with self._lock:
            self._free.extend(held.buffers)
            self._pooled += sum(b.numel() for b in held.buffers)
            while self._pooled > self.pool_bytes:  # the oldest go: the sizes still being read are the recent ones
                self._pooled -= self._free.pop(0).numel()
        held.tensors, held.buffers = [], []

    def _buffer(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i].numel() == nbytes:
                    self._pooled -= nbytes
                    return self._free.pop(i)
        return torch.empty(nbytes, dtype=torch.uint8)

    def _read(self, at: Located, buffers: list[torch.Tensor]) -> torch.Tensor:
        fd = self._fds.get(at.path)
        if fd is None:
            fd = self._fds[at.path] = os.open(at.path, os.O_RDONLY)
        raw = self._buffer(at.nbytes)
        buffers.append(raw)
        view = memoryview(raw.numpy()) if at.nbytes else memoryview(b"")
        pos = 0
        while pos < at.nbytes:
            n = os.preadv(fd, [view[pos : pos + _READ]], at.offset + pos)
            if n <= 0:
                raise CheckpointError(f"{at.path}: ends before the tensor at byte {at.offset + pos} (truncated?)")
            pos += n
        self.bytes_read += at.nbytes
        return raw.view(_TORCH[at.dtype]).reshape(at.shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class WindowReader:
    """The input checkpoints, read one tensor at a time as memory-mapped views, in windows (for groups too
    large to hold: see kwarp.merger.streaming)."""

    def __init__(self, folders: Sequence[Path], window_bytes: int = WINDOW_BYTES):
        self.readers = [TensorReader(Path(f)) for f in folders]
        self.window_bytes = window_bytes
        self.bytes_read = 0

    @contextmanager
    def whole(self, name: str, which: Sequence[int]) -> Iterator[list[torch.Tensor]]:
        """Tensors `name` of the chosen inputs, whole (for copies); shard handles close on exit."""
        try:
            tensors = [self.readers[i].get(name) for i in which]
            self.bytes_read += sum(t.numel() * t.element_size() for t in tensors)
            yield tensors
        finally:
            self._close()

    def windows(self, name: str, which: Sequence[int] | None = None) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
        """(start, end, flat views [start:end] of tensor `name` of the chosen inputs), window by window."""
        idx = list(range(len(self.readers)) if which is None else which)
        start = 0
        while True:
            try:
                flats = [self.readers[i].get(name).reshape(-1) for i in idx]
                numel = flats[0].numel()
                end = min(numel, start + max(1, self.window_bytes // flats[0].element_size()))
                views = [f[start:end] for f in flats]
                del flats
                self.bytes_read += sum(v.numel() * v.element_size() for v in views)
                yield start, end, views
                del views
            finally:
                # Dropping the views and the handles unmaps the window: its pages leave the process.
                self._close()
            start = end
            if start >= numel:
                return

    def _close(self) -> None:
        for r in self.readers:
            r.close()
