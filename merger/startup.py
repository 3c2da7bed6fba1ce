"""How a merge process imports torch and the engine: once, with the garbage collector out of the way.

A merger is a short process (a Job's pod runs `kwarp merge` once per iteration) whose start-up is
mostly `import torch`. That import creates some 250 000 objects that live until the process ends,
and Python's cyclic garbage collector, left as it is, walks them repeatedly for nothing: full
collections while the import grows the heap, and again when the interpreter shuts down. Measured on
the project's 2-core VM (`import torch` and exit, median of 8 alternating child processes, load
average 2.5): 1.88 CPU s as Python leaves it, 1.46 s with the collector paused during the import and
the imported objects frozen after it.

numpy, which torch imports, starts OpenBLAS's thread pool, one thread per core with its buffers; the
merge never calls numpy's BLAS (its arithmetic is torch's, one thread per worker), so the pool is
sized to one thread unless the environment says otherwise (`import numpy` alone: 0.17 -> 0.11 CPU s,
median of 20 alternating runs, load average 1.9).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from types import ModuleType

# The engine's entry module: it imports torch, safetensors and the rest of the engine (reading, arithmetic,
# writing), which a merge loads in any case; imported here, its objects are frozen with torch's.
ENGINE = "kwarp.merger.streaming"


def import_engine() -> ModuleType:
    """torch and the engine (ENGINE), imported the merge process's way if nothing imported torch yet; returns torch.

    Garbage that exists before the import is collected first (the heap is still small, so this is
    cheap), so that freezing does not keep it; what is frozen afterwards is what the import created
    and what the caller already held, which a merge process keeps to its end anyway. Objects created
    later are collected as usual. A process that imported torch before (a test session, a trainer)
    is left exactly as it is.
    """
    if "torch" in sys.modules:
        importlib.import_module(ENGINE)
        return sys.modules["torch"]
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch

        importlib.import_module(ENGINE)
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    return torch
