"""The output of a merge: safetensors shards laid out before the first tensor is computed, written as tensors
arrive, hashed while written.

The merge knows every output tensor (name, dtype, shape) and the order it computes them in, so the
shard boundaries, each shard's header and the final file names can be fixed up front. Each tensor
then goes to its place as soon as it is computed: no shard is held in memory, no file is renamed, and
its sha256 is taken from the bytes as they are written (kwarp.core.checkpoints.record_digests hands it
to the manifest, so nothing is read back to hash it). Writing runs on a thread of its own, so the disk
works while the next group is computed, and hashing on another (kwarp.merger.hashing), so the disk does not
wait for the hash; at most `queue_bytes` of computed tensors wait for the two.

A file written here is an ordinary safetensors file: an 8-byte little-endian header length, the
JSON header (padded with spaces to 8 bytes), then the tensors' bytes back to back in header order.

The bytes go to the file with direct I/O (O_DIRECT) where the filesystem takes it: the writer copies them
into an aligned staging buffer of its own and writes it out in whole blocks, so no page-cache page is
allocated for the output. On the 2-core VM the merge's buffered write was the largest item of its CPU
time: a profile put 1.17 CPU s of the 0.49 GB benchmark in copy_folio_from_iter_atomic, the kernel's
copy into freshly allocated page-cache folios (writing 480 MiB into a new file cost 1.1-1.3 CPU s by
any write size from 64 KiB to 240 MiB, with or without fallocate/ftruncate first), and direct I/O
0.02 s. The price: the output is not left in the page cache, so a reader in the same machine reads it
from the disk; and the disk write is done, and waited for, by the writer thread rather than later by
the kernel's writeback. A filesystem that refuses direct I/O (EINVAL at open or at a write) gets the
ordinary buffered writes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from kwarp.core.checkpoints import SAFETENSORS_INDEX, SINGLE_SHARD, CheckpointError, record_digests
from kwarp.merger.hashing import ShardHasher

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


# Direct I/O needs the buffer's address, the file offset and the length aligned to the device's logical
# block (512 or 4096 bytes on common disks; statx's STATX_DIOALIGN is not in Python's os): 4096 covers both.
DIRECT_BLOCK = 4096
# Bytes staged before each direct write: one write call per 8 MiB (the disk of the 2-core VM took 480 MiB
# in 8 MiB direct writes at 1.5 GB/s).
STAGING_BYTES = 8 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere the writes are buffered


class _Staging:
    """A page-aligned buffer (an anonymous mapping) that collects a file's bytes for whole-block direct writes;
    one per writer, reused for every shard."""

    def __init__(self, nbytes: int):
        # Private: plain process memory, not Python's default shared anonymous mapping (shmem, counted as such).
        self.map = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
            # In transparent huge pages where the kernel has them ("madvise" mode asks for this): each direct write
            # then pins 4 pages of 2 MiB, not 2048 of 4 KiB. On the 2-core VM writing 480 MiB this way took
            # 0.006 CPU s and 0.17-0.21 s (2.3-2.9 GB/s) against 0.025-0.033 CPU s and 0.36-0.38 s in 4 KiB pages.
            try:
                self.map.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # a kernel without transparent huge pages
                pass
        self.view = memoryview(self.map)
        anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(anchor)
        del anchor  # (an exported buffer would keep the mapping from closing)

    def close(self) -> None:
        self.view.release()
        self.map.close()


class _File:
    """One shard being written: its descriptor and size; with `staging`, by direct I/O (its sha256 is taken
    by the writer's ShardHasher)."""

    def __init__(self, path: Path, staging: _Staging | None, block: int):
        self.path = path
        self.size = 0
        self.block = block
        self.staging = staging if _O_DIRECT else None
        self.filled = 0  # bytes waiting in the staging buffer
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self.fd = os.open(path, flags | (_O_DIRECT if self.staging is not None else 0), 0o644)
        except OSError as err:  # a filesystem without direct I/O
            if self.staging is None or err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self.staging = None
            self.fd = os.open(path, flags, 0o644)

    @property
    def direct(self) -> bool:
        """Whether the bytes still go to the file by direct I/O."""
        return self.staging is not None

    def write(self, data: memoryview | torch.Tensor) -> None:
        """Append `data` (bytes, or a flat uint8 tensor) to the file."""
        view = memoryview(data.numpy()) if isinstance(data, torch.Tensor) else data
        self.size += len(view)
        pos = 0
        while pos < len(view):
            staging = self.staging
            if staging is None:
                self._write_all(view[pos:])
                return
            n = min(len(view) - pos, len(staging.view) - self.filled)
            if isinstance(data, torch.Tensor) and n >= 1 << 16:
                # ctypes releases the GIL for the call; a torch copy_ would run on torch's intra-op threads
                # where the caller has not made torch single-threaded (their OpenMP spin-waits cost more
                # CPU than the copy).
                ctypes.memmove(staging.address + self.filled, data.data_ptr() + pos, n)
            else:
                staging.view[self.filled : self.filled + n] = view[pos : pos + n]
            self.filled += n
            pos += n
            if self.filled == len(staging.view):
                self._flush()

    def _flush(self) -> None:
        """Write the staged bytes (a whole number of blocks) at the file's end; empty the staging buffer."""
        assert self.staging is not None
        staged = self.staging.view[: self.filled]
        self.filled = 0
        written = 0
        try:
            while written < len(staged):
                written += os.write(self.fd, staged[written:])
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            # The filesystem wants another alignment (a refused direct write writes nothing): buffered from
            # here on, from the first byte not written; Linux lets a descriptor drop O_DIRECT.
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self.staging = None
            self._write_all(staged[written:])

    def _write_all(self, view: memoryview) -> None:
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])

    def close(self) -> None:
        try:
            if self.staging is not None and self.filled:
                # The last block zero-padded to a whole block, then the file cut back to its true size.
                end = -(-self.filled // self.block) * self.block
                self.staging.view[self.filled : end] = bytes(end - self.filled)
                self.filled = end
                self._flush()
                os.ftruncate(self.fd, self.size)
        finally:
            os.close(self.fd)


_STOP = object()


class PlannedShardWriter:
    """Writes `tensors` (in this order, each exactly once) into shards under `folder`, then the index.

    `write` hands a tensor (or `write_piece` a piece of one) to the writer thread and returns; at most
    `queue_bytes` wait for the thread (a larger tensor goes alone). `close` waits for the thread, writes the
    index (for more than one shard) and records every shard's sha256 for the manifest, taken by a ShardHasher
    thread from the bytes just written (a tensor is given back by `written` once written and hashed). An error
    of either thread is raised by the next `write` or by `close`. With `direct` (the default) the shards are
    written by direct I/O in blocks of `direct_block` bytes where the filesystem takes it (see above);
    `direct_shards` then names the shards written entirely that way.
    """

    def __init__(self, folder: Path, tensors: Sequence[Planned], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None, queue_bytes: int = 256 << 20, *, direct: bool = True,
                 direct_block: int = DIRECT_BLOCK, staging_bytes: int = STAGING_BYTES):
        if direct and (direct_block <= 0 or staging_bytes % direct_block):
            raise ValueError(f"staging_bytes ({staging_bytes}) must be a multiple of direct_block ({direct_block})")
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
        self._direct = direct and bool(_O_DIRECT)
        self._direct_block = direct_block
        self._staging_bytes = staging_bytes
        self.direct_shards: list[str] = []  # the shards written entirely by direct I/O
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queue_bytes = queue_bytes
        self._waiting = 0  # bytes handed to the thread and not yet written
        self._room = threading.Condition()
        self._error: BaseException | None = None
        self._hasher = ShardHasher(self._fail)
        self._thread = threading.Thread(target=self._run, name="kwarp-merge-writer", daemon=True)
        self._thread.start()

    def write(self, name: str, tensor: torch.Tensor, written: Callable[[torch.Tensor], None] | None = None) -> None:
        """Queue `tensor` to be written as `name`; `written(tensor)` is called once its bytes are in the file (or
        the staging buffer) and hashed (to recycle its buffer: kwarp.merger.buffers)."""
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
        self._hasher.stop()  # hashes what the writer handed it, then ends
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
        record_digests(self.folder, self._hasher.digests)
        return list(self.names)

    def abort(self) -> None:
        """Stop the thread after an error elsewhere (the folder is the caller's to remove)."""
        self._error = self._error or CheckpointError("aborted")
        self._queue.put(_STOP)
        self._thread.join()
        self._hasher.stop()

    def _fail(self, err: BaseException) -> None:
        """Record the first error of the writer or hasher thread and wake a caller waiting for room."""
        with self._room:
            self._error = self._error or err
            self._room.notify_all()

    def _written(self, tensor: torch.Tensor, nbytes: int, written: Callable[[torch.Tensor], None] | None) -> None:
        """A queued tensor is written and hashed: its buffer may be reused, and its bytes leave the budget."""
        if written is not None:
            written(tensor)
        with self._room:
            self._waiting -= nbytes
            self._room.notify_all()

    def _run(self) -> None:
        current: _File | None = None
        staging = _Staging(self._staging_bytes) if self._direct else None  # one per writer, for every shard
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
                            done, current = current, None  # closed once, even if closing fails
                            self._finish(done)
                        shard = k
                        current = _File(self.folder / self.names[k], staging, self._direct_block)
                        header = memoryview(header_bytes(self.shards[k], self.metadata))
                        current.write(header)
                        self._hasher.begin(current.path.name)
                        self._hasher.update(header)
                    assert current is not None
                    data = tensor.reshape(-1).view(torch.uint8)
                    if nbytes:
                        current.write(data)
                    # Its bytes are in the file or the staging buffer; once hashed, its buffer is reusable.
                    self._hasher.update(memoryview(data.numpy()), partial(self._written, tensor, nbytes, written))
                    del tensor, written, data
                    left -= nbytes
                    if left <= 0:
                        break
            if current is not None:
                done, current = current, None
                self._finish(done)
            self._queue.get()  # the stop marker
        except BaseException as err:  # handed to the caller's thread
            self._fail(err)
        finally:
            if current is not None:  # an error or an abort: the file is incomplete; the folder is the caller's
                try:
                    current.close()
                except OSError:
                    pass
            if staging is not None:
                staging.close()

    def _finish(self, f: _File) -> None:
        f.close()
        self._hasher.end(f.path.name)
        if f.direct:
            self.direct_shards.append(f.path.name)
