"""The read side of the s3:// store's transfers: parallel, resumable, verified downloads of checkpoint files.

A checkpoint is fetched as about `streams` ranged GETs in flight at once over all its files (not one GET
per fixed-size part), each streamed in CHUNK pieces into its place in the file:

- a file is cut into as few ranges as keep the streams busy (plan_ranges): one large file gets
  `streams` ranges, a checkpoint of several large shards one GET per shard. Every request costs the
  server a lookup (moto, an in-memory Python server, even reads the whole object for each range:
  fixed 64 MiB parts cost it O(object) per part);
- each range is streamed through one reusable CHUNK buffer (4 MiB): no range-sized buffers are allocated,
  zero-filled and freed per request (64 MiB bytearrays per part, up to 2 x concurrency of them,
  were the main client cost of the earlier download);
- sha256 is computed in file order without holding ranges in memory: the range at offset 0 is hashed
  as it streams, later ranges are hashed from the file (the page cache) once every byte before them
  is hashed, by whichever worker completes the gap;
- a range that fails midway is retried from the first byte not yet written (a Range request from
  there), so a reset connection costs the bytes in flight, not the range.

Without a local file (verifying in place) every file is one GET, hashed as it streams. Figures, their
machine and load: docs/performance.md.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kwarp.core.checkpoints import FileEntry
from kwarp.store.s3_config import MiB, ShortRead

T = TypeVar("T")

# One read from the connection, one pwrite, one hash update per chunk. Each of them hands the GIL over
# between the streams' threads: with 1 MiB chunks the 8-stream download took 1.7 CPU s on 502 MB against
# 1.0 s with 4 MiB (benchmarks/store.py, moto, load 12-18 on 2 cores).
CHUNK = 4 * MiB
# Ranges smaller than this are not worth a request of their own.
MIN_RANGE = 8 * MiB


def split_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """[(offset, length)] covering `size` bytes in parts of `part_size` (none for an empty file)."""
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


def plan_ranges(sizes: Sequence[int], streams: int, min_range: int = MIN_RANGE) -> list[list[tuple[int, int]]]:
    """Ranges of each file such that about `streams` GETs of about equal length cover all the bytes.

    The target length is the total over `streams` (at least min_range); a file is cut into the fewest
    equal ranges no longer than the target, so small files are one GET each. When the large files
    alone (min_range and more) keep half the streams busy, none is cut: more streams than that buy
    little from one server, and a server that reads the whole object for every range (moto) pays a
    whole read per range.
    """
    total = sum(sizes)
    streams = max(1, streams)
    large = sum(1 for size in sizes if size >= min_range)
    if large >= -(-streams // 2):
        target = max(sizes)
    else:
        target = max(min_range, -(-total // streams))
    plans = []
    for size in sizes:
        pieces = -(-size // target)
        plans.append(split_ranges(size, -(-size // pieces)) if size else [])
    return plans


@dataclass
class FileDownload:
    """One file of a checkpoint: where it goes (fd None: hashed only), its ranges, its running sha256."""

    entry: FileEntry
    object_name: str
    fd: int | None
    ranges: list[tuple[int, int]]
    _sha: Any = field(default_factory=hashlib.sha256, repr=False)
    _hashed: int = 0  # bytes [0, _hashed) are in the digest
    _done: dict[int, int] = field(default_factory=dict, repr=False)  # completed ranges past the digest: start -> end
    _busy: bool = False  # a worker is hashing from the file
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hexdigest(self) -> str:
        if self._hashed != self.entry.size:  # pragma: no cover - a bug, not a transfer error
            raise AssertionError(f"{self.entry.name}: {self._hashed} of {self.entry.size} bytes hashed")
        return self._sha.hexdigest()

    def hash_inline(self, data: memoryview) -> None:
        """Bytes of the range at offset 0, in order, as they arrive (no other range is hashed before it)."""
        self._sha.update(data)
        self._hashed += len(data)

    def completed(self, offset: int, end: int) -> None:
        """Range [offset, end) is in the file: hash, from the file, every completed range the digest reached."""
        with self._lock:
            if end > offset:
                self._done[offset] = end
            if self._busy:
                return  # the worker hashing now picks this range up
            self._busy = True
        try:
            while True:
                with self._lock:
                    start = self._hashed
                    stop = self._done.pop(start, None)
                    if stop is None:
                        self._busy = False
                        return
                self._hash_from_file(start, stop)
        except BaseException:
            with self._lock:
                self._busy = False
            raise

    def _hash_from_file(self, start: int, stop: int) -> None:
        assert self.fd is not None  # without a file every range is hashed inline
        buf = bytearray(min(CHUNK, stop - start))
        view = memoryview(buf)
        pos = start
        while pos < stop:
            n = os.preadv(self.fd, [view[: min(CHUNK, stop - pos)]], pos)
            if n <= 0:
                raise ShortRead(f"{self.entry.name}: short read at {pos} while hashing")
            self._sha.update(view[:n])
            pos += n
        self._hashed = stop


Retrying = Callable[[str, Callable[[], T]], T]


class RangeFetcher:
    """Runs the ranged GETs of a list of FileDownloads on one pool of `streams` threads."""

    def __init__(self, client: Any, bucket: str, retrying: Retrying[Any], streams: int,
                 on_bytes: Callable[[int], None] | None = None):
        self.client = client
        self.bucket = bucket
        self.retrying = retrying
        self.streams = max(1, streams)
        self.on_bytes = on_bytes  # counters: called with each chunk's length

    def fetch(self, files: Sequence[FileDownload], progress: Callable[[int], None] | None = None) -> None:
        """Every range of every file, largest files first; the first failure stops the others."""
        failed = threading.Event()
        tasks = [(f, off, length) for f in sorted(files, key=lambda f: -f.entry.size) for off, length in f.ranges]
        for f in files:
            if not f.ranges:
                f.completed(0, 0)  # an empty file: nothing to fetch, the digest of b""
        if not tasks:
            return

        def run(f: FileDownload, offset: int, length: int) -> None:
            if failed.is_set():
                return
            try:
                self._fetch_range(f, offset, length, failed, progress)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(min(self.streams, len(tasks)), thread_name_prefix="kwarp-s3-get") as pool:
            futures = [pool.submit(run, *t) for t in tasks]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                failed.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise errors[0]  # type: ignore[misc]

    def _fetch_range(
        self, f: FileDownload, offset: int, length: int, failed: threading.Event,
        progress: Callable[[int], None] | None,
    ) -> None:
        inline = offset == 0
        buf = bytearray(min(CHUNK, length))
        view = memoryview(buf)
        pos = 0  # bytes of the range already in the file: an attempt after a failure resumes there

        def attempt() -> None:
            nonlocal pos
            response = self.client.get_object(self.bucket, f.object_name, offset=offset + pos, length=length - pos)
            try:
                while pos < length:
                    if failed.is_set():
                        return
                    n = response.readinto(view[: min(CHUNK, length - pos)])
                    if not n:
                        raise ShortRead(f"connection ended after {pos} of {length} bytes")
                    chunk = view[:n]
                    if f.fd is not None:
                        written = 0
                        while written < n:
                            written += os.pwrite(f.fd, chunk[written:], offset + pos + written)
                    if inline:
                        f.hash_inline(chunk)
                    pos += n
                    if self.on_bytes:
                        self.on_bytes(n)
                    if progress:
                        progress(n)
            finally:
                response.close()
                response.release_conn()

        self.retrying(f"GET s3://{self.bucket}/{f.object_name} [{offset}, {offset + length})", attempt)
        if pos == length:
            f.completed(offset, offset + length if not inline else offset)
