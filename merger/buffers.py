"""Output buffers of the merge, recycled: a computed tensor's memory comes back once its writer has written it.

A fresh tensor of n bytes costs n/4096 page faults, each handing the process a page the kernel
first fills with zeros; on the 2-core VM that zeroing was the largest single item of the merge's CPU
time (clear_page_erms, 28% of the samples of a perf profile of the 0.49 GB benchmark, with the page
faults of the read buffers). The blocks of a model are alike, so the buffers of one block's outputs
fit the next block's: a buffer given back is kept, by byte size, for the next tensor of that size.

At most `idle_bytes` wait unused (the most recently given back are kept: the sizes still being
computed are the recent ones). The buffers in use are bounded elsewhere: by the writers' queues
(kwarp.merger.writer) and the tensor being computed. `allocated_bytes` counts every fresh allocation,
so a test can see that the memory of a merge does not grow with the number of blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


class BufferPool:
    """Byte buffers (flat uint8 tensors) handed out by `take` and returned by `give`, recycled by size."""

    def __init__(self, idle_bytes: int = 256 << 20):
        self.idle_bytes = idle_bytes
        self.allocated_bytes = 0  # bytes of every fresh buffer allocated so far
        self.reused_bytes = 0  # bytes handed out again from given-back buffers
        self._idle: list[torch.Tensor] = []  # oldest first
        self._held = 0  # bytes in _idle
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of the buffers waiting for reuse."""
        return self._held

    def take(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised tensor of this dtype and shape, on a recycled buffer of its byte size when one waits."""
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        raw = None
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].numel() == nbytes:
                    raw = self._idle.pop(i)
                    self._held -= nbytes
                    self.reused_bytes += nbytes
                    break
            else:
                self.allocated_bytes += nbytes
        if raw is None:
            raw = torch.empty(nbytes, dtype=torch.uint8)
        return raw.view(dtype).view(shape)

    def give(self, tensor: torch.Tensor) -> None:
        """`tensor` (from `take`) is no longer read or written by anyone: its buffer may be handed out again."""
        raw = tensor.reshape(-1).view(torch.uint8)
        if raw.numel() == 0 or raw.numel() > self.idle_bytes:
            return
        with self._lock:
            self._idle.append(raw)
            self._held += raw.numel()
            while self._held > self.idle_bytes:
                self._held -= self._idle.pop(0).numel()

    def after(self, tensor: torch.Tensor, users: int) -> Callable[[torch.Tensor], None]:
        """A callback that gives `tensor` back on its `users`-th call (each writer that got it calls it once)."""
        left = [users]
        lock = threading.Lock()

        def done(_: torch.Tensor) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.give(tensor)

        return done
