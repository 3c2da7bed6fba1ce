"""Reading a merge's inputs one group at a time: every tensor mapped from its shard once, never copied.

The engine needs each tensor of a group twice (for the Gram matrix, then for the weighted sum). A group
that fits in memory is mapped from the shards (mmap, private: the engine cannot write to the files)
and its pages are entered into the mapping up front (MADV_POPULATE_READ; the prefetch thread does
this for the next group while the workers compute this one, so a cold disk is read ahead of the
arithmetic). Both passes then read the page cache in place. Mapping costs no copy and no zeroed
page: reading the same 1.46 GB of page cache on the 2-core VM took 0.03-0.04 CPU s mapped, 0.11 s
with pread into recycled buffers, and 0.92 s with pread into fresh buffers (whose pages the kernel
must zero first). A tensor's mapping is dropped when the last view of it goes: the group after
`release`, or a copy once its writer has written it.
The safetensors headers are parsed here (8-byte length, JSON) to find each tensor's bytes.
"""

from __future__ import annotations

import ctypes
import json
import mmap
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
_READ = 64 << 20  # bytes per pread call (Linux returns at most about 2 GiB per call anyway)
# Inputs too large to hold are mapped in windows of this size (per input).
WINDOW_BYTES = 16 << 20


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
    """A group's tensors, {name: tensor} per input in input order, and the bytes they map."""

    def __init__(self, tensors: list[dict[str, torch.Tensor]], nbytes: int):
        self.tensors = tensors
        self.nbytes = nbytes


# madvise(2) advice not named by Python 3.11's mmap module: enter the pages into the mapping now (Linux
# 5.14+); where the kernel lacks it, MADV_WILLNEED starts the read-ahead and the pages are faulted in use.
MADV_POPULATE_READ = 22
_PAGE = mmap.ALLOCATIONGRANULARITY
_LIBC = ctypes.CDLL(None, use_errno=True)  # ctypes releases the GIL during the call (mmap.madvise does not)


def _populate(address: int, length: int) -> None:
    start = address - address % _PAGE
    if _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(address + length - start), MADV_POPULATE_READ) != 0:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(address + length - start), mmap.MADV_WILLNEED)


class GroupReader:
    """Maps named tensors of several checkpoints; keeps each shard open until close.

    `mapped_bytes` counts the tensor bytes of the groups read and not yet released (at most two groups
    with the prefetch: this one and the next); `peak_mapped_bytes` is its high-water mark.
    """

    def __init__(self, folders: list[Path]):
        self.maps = [locate(f) for f in folders]
        self.bytes_read = 0
        self.mapped_bytes = 0
        self.peak_mapped_bytes = 0
        self._fds: dict[Path, tuple[int, int]] = {}  # path -> (descriptor, size)
        self._lock = threading.Lock()

    def nbytes(self, names: list[str]) -> int:
        """Bytes of these tensors over every input."""
        return sum(m[n].nbytes for m in self.maps for n in names)

    def read(self, names: list[str]) -> Held:
        tensors = []
        for located in self.maps:
            by_file: dict[Path, list[str]] = {}
            for n in names:
                by_file.setdefault(located[n].path, []).append(n)
            got: dict[str, torch.Tensor] = {}
            for path, in_file in by_file.items():
                got.update(self._map(path, {n: located[n] for n in in_file}))
            tensors.append({n: got[n] for n in names})
        nbytes = self.nbytes(names)
        with self._lock:
            self.bytes_read += nbytes
            self.mapped_bytes += nbytes
            self.peak_mapped_bytes = max(self.peak_mapped_bytes, self.mapped_bytes)
        return Held(tensors, nbytes)

    def release(self, held: Held) -> None:
        """The engine is done with the group: its mappings go once nothing else (a writer) holds a view."""
        with self._lock:
            self.mapped_bytes -= held.nbytes
        held.tensors, held.nbytes = [], 0

    def _open(self, path: Path) -> tuple[int, int]:
        with self._lock:
            if path not in self._fds:
                fd = os.open(path, os.O_RDONLY)
                self._fds[path] = (fd, os.fstat(fd).st_size)
            return self._fds[path]

    def _map(self, path: Path, located: dict[str, Located]) -> dict[str, torch.Tensor]:
        """Tensors of one shard, as views of one mapping of the bytes from the first to the last of them.

        One mapping per shard and group, not per tensor: Python's mmap holds a duplicate of the file
        descriptor, and a model-granularity group may have hundreds of tensors.
        """
        fd, size = self._open(path)
        out: dict[str, torch.Tensor] = {}
        mapped: dict[str, Located] = {}
        for name, at in located.items():
            if at.offset + at.nbytes > size:  # a mapped page past the end of the file kills the process (SIGBUS)
                raise CheckpointError(f"{path}: ends before the tensor '{name}' at bytes {at.offset}-"
                                      f"{at.offset + at.nbytes} (truncated?)")
            dtype = _TORCH[at.dtype]
            if at.nbytes == 0:
                out[name] = torch.empty(at.shape, dtype=dtype)
            elif at.offset % dtype.itemsize:  # the file does not align this tensor to its elements: read a copy
                out[name] = self._pread(fd, at)
            else:
                mapped[name] = at
        if mapped:
            start = min(at.offset for at in mapped.values())
            start -= start % _PAGE
            end = max(at.offset + at.nbytes for at in mapped.values())
            mapping = mmap.mmap(fd, end - start, offset=start, access=mmap.ACCESS_COPY)  # private: never the file
            whole = torch.frombuffer(mapping, dtype=torch.uint8)  # holds the mapping: unmapped with the last view
            for name, at in mapped.items():
                raw = whole[at.offset - start : at.offset - start + at.nbytes]
                _populate(raw.data_ptr(), at.nbytes)
                out[name] = raw.view(_TORCH[at.dtype]).reshape(at.shape)
        return out

    @staticmethod
    def _pread(fd: int, at: Located) -> torch.Tensor:
        raw = torch.empty(at.nbytes, dtype=torch.uint8)
        view = memoryview(raw.numpy())
        pos = 0
        while pos < at.nbytes:
            n = os.preadv(fd, [view[pos : pos + _READ]], at.offset + pos)
            if n <= 0:
                raise CheckpointError(f"{at.path}: ends before the tensor at byte {at.offset + pos} (truncated?)")
            pos += n
        return raw.view(_TORCH[at.dtype]).reshape(at.shape)

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
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
