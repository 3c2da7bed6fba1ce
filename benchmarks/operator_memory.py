"""What the operator holds per Job and per run: its Job index and its run cache, loaded with N runs' Jobs.

    python -P benchmarks/operator_memory.py [--runs 1000]

Each run's 9 Jobs (I = 2, M = 2: prepare, 2 x (2 members, merge, evaluation)) are built by the operator's
own builder (kwarp.operator.jobs.job_manifest), given what the API server adds (uid, resourceVersion,
creationTimestamp, generation, namespace), and fed to a JobIndex as three watch events each (ADDED,
running, Complete), each a fresh copy decoded from JSON as kopf hands them over. The runs go into a
RunCache as the WarpRun documents kopf's watch shows (spec and metadata; no status, so a lower bound).

Printed per Job and per run: the objects CPython's collector tracks (what each full collection walks:
`gc.get_objects()` before and after, each after a full collection) and the bytes (sys.getsizeof over
every dict, list, string and number reachable), for the index keeping whole Jobs (as before) and keeping
operator/jobrecord.py's record (now). Also the import-time heap of the operator's modules, which
`gc.freeze()` would take out of every collection.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kwarp.core.plan import Task  # noqa: E402
from kwarp.core.spec import parse  # noqa: E402
from kwarp.operator.app import build  # noqa: E402, F401  (the operator's modules, as serve imports them)
from kwarp.operator.jobindex import JobIndex  # noqa: E402
from kwarp.operator.jobrecord import job_record  # noqa: E402
from kwarp.operator.jobs import LABEL_RUN, WorkerSettings, job_manifest  # noqa: E402
from kwarp.operator.observe import read_alike  # noqa: E402
from kwarp.operator.runcache import RunCache  # noqa: E402

NS = "default"
STAMP = "2026-12-03T16:00:00Z"


def warprun_document(name: str, uid: str) -> dict[str, Any]:
    """A WarpRun as the API server returns it (the benchmark's spec: I = 2, M = 2, 3 steps)."""
    spec = {
        "policy": {"location": "/models/sft"},
        "reward": {"callable": "kwarp.tasks.sentiment:reward"},
        "data": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl"},
        "storage": {"url": "/tmp/kwarp-store"},
        "warp": {"iterations": 2, "policies": 2, "steps": 3},
        "evaluation": {"etas": [0.0, 0.3, 1.0]},
        "failurePolicy": {"maxRetries": 1},
    }
    meta = {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "1", "generation": 1,
            "creationTimestamp": STAMP, "finalizers": ["kwarp.dev/finalizer"]}  # fmt: skip
    return {"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": meta, "spec": spec}


def tasks(iterations: int = 2, members: int = 2) -> list[Task]:
    out = [Task.prepare()]
    for i in range(iterations):
        out += [Task.train(i, m) for m in range(members)] + [Task.merge(i), Task.eval(i)]
    return out


def job_versions(doc: dict[str, Any], rv: int) -> list[str]:
    """The run's Jobs, each as its three watch events' JSON: created, running, Complete."""
    run = parse(doc)
    uid = doc["metadata"]["uid"]
    out = []
    for n, task in enumerate(tasks()):
        job = job_manifest(run, uid, task, 0, WorkerSettings(image="kwarp-worker:bench"))
        job["metadata"].update(namespace=NS, uid=f"{uid}-{n}", creationTimestamp=STAMP, generation=1)
        states = [None, {"startTime": STAMP, "active": 1, "ready": 1},
                  {"startTime": STAMP, "completionTime": STAMP, "ready": 0, "succeeded": 1,
                   "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                                   "message": "Reached expected number of succeeded pods", "lastTransitionTime": STAMP},
                                  {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                                   "message": "Reached expected number of succeeded pods", "lastTransitionTime": STAMP}]}]  # fmt: skip
        for k, status in enumerate(states):
            version = dict(job, metadata=dict(job["metadata"], resourceVersion=str(rv + 3 * n + k)))
            if status is not None:
                version["status"] = status
            out.append(json.dumps(version))
    return out


def deep_bytes(root: Any) -> int:
    """sys.getsizeof over every dict, list, tuple, string and number reachable from root, each once."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set):
            stack.extend(obj)
    return total


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def full_collection_ms(n: int = 5) -> float:
    """The median wall time of a full collection of this process (what is frozen is not walked)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 1)


def load_index(runs: int, keep: Callable[[Any], dict[str, Any]]) -> tuple[JobIndex, int, int]:
    """A JobIndex fed every run's Job events; (index, tracked objects it added, its bytes)."""
    before = tracked()
    index = JobIndex(same=read_alike, keep=keep)
    for r in range(runs):
        name = f"load-{r:04d}"
        index.seed(NS, name, [], "1")  # as a run's first pass's LIST, before its Jobs: the events bring them
        for text in job_versions(warprun_document(name, f"uid-{r}"), 10 + 30 * r):
            job = json.loads(text)
            index.event(NS, job["metadata"]["labels"][LABEL_RUN], job, deleted=False)
    return index, tracked() - before, deep_bytes(index._jobs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    jobs = 9 * args.runs
    gc.collect()
    print(f"the operator's modules imported: {len(gc.get_objects())} tracked objects (what gc.freeze() after "
          "start-up takes out of every collection)")  # fmt: skip
    figures: dict[str, Any] = {"runs": args.runs, "jobs": jobs}
    gc.freeze()  # as serve does after start-up
    for label, keep in (("whole Jobs (before)", dict), ("job_record (now)", job_record)):
        index, objects, size = load_index(args.runs, keep)
        assert sum(len(v) for v in index._jobs.values()) == jobs
        frozen = full_collection_ms()  # the modules' heap frozen (below), as serve's gc.freeze() leaves it
        gc.unfreeze()
        full = full_collection_ms()
        figures[label] = {"tracked_objects_per_job": round(objects / jobs, 1), "bytes_per_job": round(size / jobs),
                          "full_collection_ms": full, "full_collection_ms_start_up_frozen": frozen}  # fmt: skip
        print(f"JobIndex keeping {label}: {objects / jobs:.1f} tracked objects and {size / jobs:.0f} bytes per Job "
              f"({objects} objects, {size / 2**20:.1f} MiB for {jobs} Jobs); a full collection of this process "
              f"{full} ms, {frozen} ms with the start-up heap frozen (median of 5)")  # fmt: skip
        del index
        gc.collect()
        gc.freeze()  # the modules' heap again, for the next case
    before = tracked()
    cache = RunCache()
    for r in range(args.runs):
        cache.put(json.loads(json.dumps(warprun_document(f"load-{r:04d}", f"uid-{r}"))))
    objects = tracked() - before
    size = deep_bytes(cache._runs)
    figures["run_cache_per_run"] = {"tracked_objects": round(objects / args.runs, 1), "bytes": round(size / args.runs)}
    print(f"RunCache: {objects / args.runs:.1f} tracked objects and {size / args.runs:.0f} bytes per run "
          "(spec and metadata; a run's status adds to it)")  # fmt: skip
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
