"""sha256 of the merge's output shards, taken on a thread of its own from the bytes the writer has just written.

Hashing the output for the manifest costs about as much CPU as the merge's whole write (sha256 runs at about
1.8 GB/s on the 2-core VM: 0.27 s for the 0.49 GB benchmark output). On the writer's own thread it came
before each piece's direct write, so the disk waited for the hash and the hash for the disk. Here the writer
hands each piece on once its bytes are in the file or the staging buffer, and a second thread hashes the
pieces in the order they were written (hashlib releases the GIL for buffers over 2 KiB): the disk write of
one piece and the hash of the one before run at the same time. A piece's buffer is handed back (`done`)
only once it is hashed, so the writer's queue budget still bounds every computed byte held.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import Any

Hash = Any  # a hashlib object: update(bytes-like), hexdigest()
_STOP = object()


class ShardHasher:
    """Hashes the bytes of one file after another, in the order given, on a thread of its own.

    `begin(name)`, then `update(view, done)` for each piece of the file in order, then `end(name)`; `digests`
    maps each ended file to its sha256 once `stop` has returned. `done()` is called once the piece is hashed
    (or dropped after a failure). An error of the thread goes to `on_error`, and later pieces are dropped.
    """

    def __init__(self, on_error: Callable[[BaseException], None]):
        self.digests: dict[str, str] = {}
        self._on_error = on_error
        self._queue: queue.Queue[Any] = queue.Queue()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="kwarp-merge-hash", daemon=True)
        self._thread.start()

    def begin(self, name: str) -> None:
        self._queue.put(("begin", name, None))

    def update(self, view: memoryview, done: Callable[[], None] | None = None) -> None:
        """Hash `view` next (it must stay unchanged until `done` is called)."""
        self._queue.put(("update", view, done))

    def end(self, name: str) -> None:
        self._queue.put(("end", name, None))

    def stop(self) -> None:
        """Hash what was handed in so far, then end the thread; returns once it has ended."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        current: Hash | None = None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            kind, arg, done = item
            try:
                if self._failed:
                    pass
                elif kind == "begin":
                    current = hashlib.sha256()
                elif kind == "update":
                    assert current is not None, "a piece hashed before its file began"
                    if len(arg):
                        current.update(arg)
                else:
                    assert current is not None and kind == "end"
                    self.digests[arg] = current.hexdigest()
                    current = None
            except BaseException as err:  # handed to the writer, which raises it in the caller's thread
                self._failed = True
                self._on_error(err)
            del arg, item
            if done is not None:
                try:
                    done()
                except BaseException as err:
                    self._failed = True
                    self._on_error(err)
