"""A node-local cache of downloaded checkpoints, keyed by manifest digest, bounded with LRU eviction.

    $KWARP_CACHE/checkpoints/<digest>/            a verified checkpoint folder (with its MANIFEST.json)
    $KWARP_CACHE/checkpoints/.<digest>.staging-*  a download in progress (renamed into place when verified)
    $KWARP_CACHE/checkpoints/.locks/<digest>.use  shared-locked by every process using the entry; its
                                                  mtime is the entry's last use (the LRU order)
    $KWARP_CACHE/checkpoints/.locks/<digest>.fill exclusive while one process downloads the entry

KWARP_CACHE defaults to ~/.cache/kwarp; KWARP_CACHE_MAX_GB (default 100) bounds the total size.

Several processes of one node (the members of an iteration, the merger) share the cache safely:
one downloads an entry while the others wait on its fill lock, a reader never sees a partial entry
(staging sibling, then one rename), and an entry is evicted only when no process holds its use lock.
A process keeps the use lock of every entry it opened until `release` or `close` (or its exit, when
the kernel drops flock locks), so a merger reading several checkpoints never loses one to eviction.
Entries larger than the bound are still kept while in use: the bound is a target, never a reason to
delete what a process is reading.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from kwarp.core.checkpoints import MANIFEST, CheckpointError, Manifest, verify
from kwarp.store.base import StoreError

DEFAULT_MAX_GB = 100.0


def default_root(env: Mapping[str, str]) -> Path:
    return Path(env.get("KWARP_CACHE") or "~/.cache/kwarp").expanduser()


def eviction_order(entries: Mapping[str, tuple[float, int]], budget: int, keep: set[str]) -> list[str]:
    """Digests to evict, least recently used first, until the total size fits `budget`.

    `entries` maps digest -> (last use, bytes); digests in `keep` are never chosen.
    """
    total = sum(size for _, size in entries.values())
    chosen = []
    for digest, (_, size) in sorted(entries.items(), key=lambda kv: kv[1][0]):
        if total <= budget:
            break
        if digest in keep:
            continue
        chosen.append(digest)
        total -= size
    return chosen


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


@contextlib.contextmanager
def _flocked(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class CheckpointCache:
    def __init__(self, root: str | Path, max_bytes: int | None = None):
        self.root = Path(root).expanduser()
        self.dir = self.root / "checkpoints"
        self._locks = self.dir / ".locks"
        self.max_bytes = max_bytes
        self._held: dict[str, int] = {}  # digest -> descriptor holding its shared use lock
        self._mutex = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CheckpointCache:
        env = os.environ if env is None else env
        raw = env.get("KWARP_CACHE_MAX_GB", "").strip()
        try:
            max_gb = float(raw) if raw else DEFAULT_MAX_GB
        except ValueError:
            raise StoreError(f"KWARP_CACHE_MAX_GB must be a number of GB, got '{raw}'") from None
        if max_gb <= 0:
            raise StoreError(f"KWARP_CACHE_MAX_GB must be positive, got {raw}")
        return cls(default_root(env), int(max_gb * 1e9))

    def entry(self, digest: str) -> Path:
        return self.dir / digest

    def _lock_path(self, digest: str, kind: str) -> Path:
        return self._locks / f"{digest}.{kind}"

    # ---------------------------------------------------------------- opening

    def open(
        self,
        manifest: Manifest,
        fill: Callable[[Path], object],
        *,
        verify_hashes: bool = False,
        source: str = "",
    ) -> Path:
        """The cached folder of `manifest`, filled by `fill(staging_folder)` when absent.

        `fill` must write every file of the manifest and MANIFEST.json into the folder it is given,
        verifying hashes as it goes. With verify_hashes, an entry found in the cache is re-hashed.
        """
        digest = manifest.digest
        final = self.entry(digest)
        self._locks.mkdir(parents=True, exist_ok=True)
        use = os.open(self._lock_path(digest, "use"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # From here no process evicts this entry: eviction needs the use lock exclusively.
            fcntl.flock(use, fcntl.LOCK_SH)
            if not self._complete(final, digest, hashes=verify_hashes):
                with _flocked(self._lock_path(digest, "fill"), fcntl.LOCK_EX):
                    # Another process may have filled it while this one waited for the fill lock.
                    if not self._complete(final, digest, hashes=verify_hashes):
                        self._evict(keep={digest}, incoming=manifest.total_bytes)
                        self._fill(final, digest, fill, source)
            self._sync_manifest(final, manifest)
            os.utime(self._lock_path(digest, "use"))  # most recently used
        except BaseException:
            os.close(use)
            raise
        with self._mutex:
            previous = self._held.get(digest)
            self._held[digest] = use
        if previous is not None:
            os.close(previous)  # the new descriptor holds the same shared lock
        self._evict(keep={digest})
        return final

    def _complete(self, final: Path, digest: str, *, hashes: bool) -> bool:
        try:
            found = verify(final, hashes=hashes)
        except (CheckpointError, OSError):
            return False
        return found.digest == digest

    def _fill(self, final: Path, digest: str, fill: Callable[[Path], object], source: str) -> None:
        # Staging folders of this digest are leftovers of a killed process: the fill lock is ours.
        for stale in self.dir.glob(f".{digest}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = self.dir / f".{digest}.staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            fill(staging)
            got = verify(staging, hashes=False)
            if got.digest != digest:
                raise CheckpointError(
                    f"{source}: the downloaded checkpoint does not match the manifest it was opened by"
                )
            if final.exists():  # a damaged entry: move it aside, then replace it
                trash = self.dir / f".{digest}.evicting-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @staticmethod
    def _sync_manifest(final: Path, manifest: Manifest) -> None:
        """Two checkpoints with the same files share an entry; its MANIFEST.json shows the latest meta."""
        text = manifest.to_json()
        path = final / MANIFEST
        if path.read_text() != text:
            tmp = final / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)

    # ---------------------------------------------------------------- releasing and evicting

    def release(self, digest: str) -> None:
        """This process no longer reads the entry: it may be evicted."""
        with self._mutex:
            fd = self._held.pop(digest, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._mutex:
            held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)

    def held(self) -> set[str]:
        with self._mutex:
            return set(self._held)

    def entries(self) -> dict[str, tuple[float, int]]:
        """digest -> (last use as a timestamp, bytes) of every complete-looking entry."""
        out = {}
        if not self.dir.is_dir():
            return out
        for folder in self.dir.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                last = self._lock_path(folder.name, "use").stat().st_mtime
            except OSError:
                last = folder.stat().st_mtime
            out[folder.name] = (last, _folder_bytes(folder))
        return out

    def _evict(self, *, keep: set[str], incoming: int = 0) -> list[str]:
        if self.max_bytes is None:
            return []
        self._locks.mkdir(parents=True, exist_ok=True)
        evicted = []
        # One evictor at a time: two would each count the other's victims and evict too much.
        with _flocked(self._locks / "evict", fcntl.LOCK_EX):
            for leftover in self.dir.glob(".*.evicting-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            entries = self.entries()
            budget = max(0, self.max_bytes - incoming)
            for digest in eviction_order(entries, budget, keep | self.held()):
                if self._evict_one(digest):
                    evicted.append(digest)
        return evicted

    def _evict_one(self, digest: str) -> bool:
        fd = os.open(self._lock_path(digest, "use"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process reads it
            trash = self.dir / f".{digest}.evicting-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(self.entry(digest), trash)
            except FileNotFoundError:
                return False
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            # The lock file itself stays: unlinking a lock file others may have open breaks mutual exclusion.
            os.close(fd)


__all__ = ["CheckpointCache", "default_root", "eviction_order"]
