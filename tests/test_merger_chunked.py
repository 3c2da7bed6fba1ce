"""The merge's worker threads (kwarp.merger.chunked.Workers): every element computed once, in runs of whole chunks,
results in order, and a thread held up leaves its share of the window to the others."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch

from kwarp.merger.chunked import Scratch, Workers, gram_part

torch.set_num_threads(1)


@pytest.mark.parametrize("n,chunk,threads", [(1000, 37, 3), (1000, 37, 2), (37, 37, 2), (10, 37, 4), (0, 37, 2),
                                             (5000, 64, 1), (64 * 16 * 2 * 3 + 5, 64, 2)])
def test_runs_cover_the_window_once_in_whole_chunks_in_order(n: int, chunk: int, threads: int) -> None:
    workers = Workers(threads, members=2, chunk=chunk)
    try:
        got = workers.run(n, lambda s, e, scratch: (s, e, threading.get_ident()))
    finally:
        workers.close()
    assert got[0][0] == 0 and got[-1][1] == n
    for (s, e, _), (s2, _, _) in zip(got, got[1:], strict=False):
        assert e == s2 and s % chunk == 0 and e - s > 0  # contiguous, in order, chunk-aligned
    assert all((e - s) % chunk == 0 for s, e, _ in got[:-1])


def test_a_thread_held_up_leaves_its_share_to_the_others() -> None:
    """The first run any thread takes waits until every other run is done: the other thread computes all the rest
    (with the window cut into equal parts up front, the held thread would hold up half the window)."""
    n, chunk = 64 * 100, 64
    workers = Workers(2, members=2, chunk=chunk)
    lock = threading.Lock()
    done: Counter[int] = Counter()  # elements computed, by thread
    held: list[tuple[int, int]] = []

    def fn(s: int, e: int, scratch: Scratch) -> int:
        with lock:
            first = not held
            if first:
                held.append((s, e))
        if first:
            deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
            while sum(done.values()) < n - (e - s):
                if time.monotonic() > deadline:
                    pytest.fail(f"the other thread computed {sum(done.values())} of the {n - (e - s)} other elements")
                time.sleep(0.005)
        with lock:
            done[threading.get_ident()] += e - s
        return s

    try:
        starts = workers.run(n, fn)
    finally:
        workers.close()
    assert starts == sorted(starts) and sum(done.values()) == n
    (s, e), = held
    assert e - s < n / 2  # the held thread had taken one short run, not half the window


def test_the_gram_of_a_window_does_not_depend_on_threads_or_runs() -> None:
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(10_007, generator=gen).to(torch.bfloat16) for _ in range(3)]
    results = []
    for threads in (1, 2, 3):
        workers = Workers(threads, members=2, chunk=64)
        try:
            results.append(torch.cat(workers.run(views[0].numel(), lambda s, e, sc: gram_part(views, s, e, sc))))
        finally:
            workers.close()
    assert results[0].shape == (157, 2, 2)
    assert all(torch.equal(r, results[0]) for r in results[1:])
