"""The garbage collector's settings in the operator's process, applied by `serve` once it has started.

CPython's full collection walks every object the process tracks and stops all of its threads meanwhile.
The operator holds state for every object it watches (its Job index and run cache; kopf's memory of each
object; a metrics series per run and gauge) and the import-time heap of kopf, the kubernetes client and
pydantic (~110k objects), so at 1000 runs (9000 Jobs) each full collection stopped it for up to 1.5 s on
a 2-core machine, and every reaction in flight waited (docs/performance.md, "Paced Jobs"). Two settings:

- `freeze`: after start-up (modules imported, the handlers built), a collection, then gc.freeze(): what
  exists then is kept out of every later collection: mostly code, classes and settings that live as long
  as the process (what of it becomes garbage later is never reclaimed).
- `threshold2`: how many collections of the middle generation a full one waits for (Python's default 10).
  At 1000, full collections still happen (after ~7 million allocations net of frees, and only once the
  objects that survived since the last one reach a quarter of the rest), but rarely. What they would have
  freed is cyclic garbage that lived long enough to reach the oldest generation; the operator makes little
  of it: docs/performance.md ("The operator's own collections") gives the count a final collection found
  after a 1000-run run and the peak resident memory with this setting.

None (`OperatorOptions(collections=None)`) leaves the process as it is (the tests' operators, which share
the test process).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass


@dataclass(frozen=True)
class CollectionPolicy:
    threshold2: int | None = 1000  # None: leave the third threshold as it is
    freeze: bool = True


def apply(policy: CollectionPolicy | None) -> None:
    if policy is None:
        return
    if policy.threshold2 is not None:
        gc.set_threshold(*gc.get_threshold()[:2], policy.threshold2)
    if policy.freeze:
        gc.collect()  # garbage is not frozen
        gc.freeze()
