"""The merge's float arithmetic, chunk by chunk, shared out between worker threads (kwarp.merger.streaming
streams the tensors; this module computes on them).

Each chunk (kwarp.merger.streaming.CHUNK_ELEMENTS) is converted to float32 (float64 for float64 checkpoints) in reusable
scratch buffers; Gram products are accumulated per chunk and summed in float64 in order by the caller,
so the result does not depend on how chunks were shared out; the weighted sum is rounded once into the
output's dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from kwarp.merger.combination import Combination
from kwarp.merger.liti import liti_into


class Scratch:
    """Reusable float buffers of one chunk, per compute dtype (float32, or float64 for float64 checkpoints)."""

    def __init__(self, members: int, chunk: int):
        self.members = members
        self.chunk = chunk
        self._buffers: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def get(self, compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(base [chunk], deltas [members·chunk], work [chunk])."""
        if compute not in self._buffers:
            self._buffers[compute] = (
                torch.empty(self.chunk, dtype=compute),
                torch.empty(self.members * self.chunk, dtype=compute),
                torch.empty(self.chunk, dtype=compute),
            )
        return self._buffers[compute]


T = TypeVar("T")


class Workers:
    """Shares each window out between threads, in runs of whole chunks taken in turn; each thread has its own scratch.

    torch releases the GIL inside an operation, so threads that each run single-threaded operations
    on their own slice proceed in parallel, without the barrier waits of torch's intra-op pool. The
    calling thread is one of the workers. Runs are handed out as threads become free (a shared counter),
    not cut in equal parts up front: on a machine whose cores also run the writer, the hash and other
    processes, a thread that falls behind takes fewer runs instead of holding up the window's end. A
    chunk's result does not depend on which thread computed it or on the runs' lengths.
    """

    # Runs per thread and window, about: enough for a late thread to leave its share to the others, few
    # enough that handing them out costs nothing next to the arithmetic.
    RUNS_PER_THREAD = 8

    def __init__(self, threads: int, members: int, chunk: int):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.chunk = chunk
        self.scratches = [Scratch(members, chunk) for _ in range(threads)]
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="kwarp-merge") if threads > 1 else None

    def run(self, n: int, fn: Callable[[int, int, Scratch], T]) -> list[T]:
        """fn(start, end, scratch) over [0, n) in contiguous runs of whole chunks; the results in the runs' order.

        With one thread, or one chunk, a single run [0, n).
        """
        chunks = (n + self.chunk - 1) // self.chunk
        threads = min(len(self.scratches), chunks)
        if self._pool is None or threads <= 1:
            return [fn(0, n, self.scratches[0])]
        per = max(1, chunks // (threads * self.RUNS_PER_THREAD)) * self.chunk
        runs = [(s, min(n, s + per)) for s in range(0, n, per)]
        turn = itertools.count()  # next() of a count is atomic under the GIL: each run is taken once
        results: list[T | None] = [None] * len(runs)

        def work(scratch: Scratch) -> None:
            while (k := next(turn)) < len(runs):
                results[k] = fn(*runs[k], scratch)

        helpers = [self._pool.submit(work, sc) for sc in self.scratches[1:threads]]
        try:
            work(self.scratches[0])
        finally:
            for f in helpers:
                f.result()  # (an error of a helper is raised here; after one of ours, the helpers finish first)
        return results  # type: ignore[return-value]  # every run was computed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def chunk_grams(views: Sequence[torch.Tensor], scratch: Scratch) -> torch.Tensor:
    """Gram matrices of the task vectors views[1:] − views[0] (flat, one dtype), one per chunk: [chunks, M, M].

    Each chunk's products are accumulated by the BLAS in float32 over at most `scratch.chunk`
    elements; the caller sums the chunks in float64, in order, so the result does not depend on how
    the chunks were shared out between threads.
    """
    base, deltas, _ = scratch.get(compute_dtype(*(v.dtype for v in views)))
    m = len(views) - 1
    n = views[0].numel()
    out = torch.empty((n + scratch.chunk - 1) // scratch.chunk, m, m, dtype=base.dtype)
    for c, (s, e) in enumerate(_chunks(n, scratch.chunk)):
        k = e - s
        b = base[:k]
        b.copy_(views[0][s:e])
        d = deltas[: m * k].view(m, k)
        for i in range(m):
            d[i].copy_(views[i + 1][s:e])
            d[i].sub_(b)
        torch.mm(d, d.t(), out=out[c])
    return out


def gram_of(views: Sequence[torch.Tensor], scratch: Scratch) -> torch.Tensor:
    """Gram matrix (float64, M×M, symmetric) of the task vectors views[1:] − views[0]."""
    acc = chunk_grams(views, scratch).to(torch.float64).sum(0)
    return (acc + acc.t()) / 2  # the two triangles' float32 products may differ in the last bit


def combine_into(
    out: torch.Tensor, views: Sequence[torch.Tensor | None], combination: Combination, scratch: Scratch
) -> None:
    """out ← (1 − Σw)·views[0] + Σ w_m·views[m+1], chunk by chunk, rounded once into out's dtype.

    A view whose weight is zero is never read and may be None.
    """
    weights = (combination.init_weight, *combination.weights)
    terms = []
    for w, v in zip(weights, views, strict=True):
        if w != 0.0:
            if v is None:
                raise ValueError("combine_into: an input with a non-zero weight was not fetched")
            terms.append((w, v))
    if not terms:
        out.zero_()
        return
    _, _, work = scratch.get(compute_dtype(out.dtype))
    for s, e in _chunks(out.numel(), scratch.chunk):
        acc = work[: e - s]
        w0, v0 = terms[0]
        acc.copy_(v0[s:e])
        if w0 != 1.0:
            acc.mul_(w0)
        for w, v in terms[1:]:
            acc.add_(v[s:e], alpha=w)  # mixed dtypes promote in place: no float copy of the input
        out[s:e].copy_(acc)


def liti_chunks(out: torch.Tensor, init: torch.Tensor, merged: torch.Tensor, eta: float, scratch: Scratch) -> None:
    """out ← (1 − η)·init + η·merged for flat tensors, chunk by chunk (0 < η < 1)."""
    _, _, work = scratch.get(compute_dtype(out.dtype))
    for s, e in _chunks(out.numel(), scratch.chunk):
        liti_into(out[s:e], init[s:e], merged[s:e], eta, work[: e - s])


# The pieces of a window that one worker computes: [s, e) of flat views.
Litis = Sequence[tuple[torch.Tensor, float]]  # (output window, η) for 0 < η < 1


def gram_part(views: Sequence[torch.Tensor], s: int, e: int, scratch: Scratch) -> torch.Tensor:
    return chunk_grams([v[s:e] for v in views], scratch)


def merge_part(
    out: torch.Tensor, terms: Sequence[torch.Tensor | None], combination: Combination, litis: Litis,
    s: int, e: int, scratch: Scratch,
) -> None:
    combine_into(out[s:e], [t[s:e] if t is not None else None for t in terms], combination, scratch)
    init = terms[0]
    assert init is not None  # θ_init is always fetched
    for lit, eta in litis:
        liti_chunks(lit[s:e], init[s:e], out[s:e], eta, scratch)

