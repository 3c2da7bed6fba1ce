"""Benchmark the API-server checks the tests apply to every object kwarp sends (tests/kube_admission.py).

    python benchmarks/admission.py [--repeat 200]

Figures (printed, never asserted), per object, median of --repeat calls:

- baseline: `kubernetes_validate.validate(job, version, strict=True)`, the package's own API, which
  reads and parses the schema files on every call;
- cached:   tests/k8s_openapi.py's per-(version, kind) validator, built once, on the same Job;
- the emulator's whole admission of that Job (schema + metadata rules), of a WarpRun through its CRD
  schema (prune, default, validate), and the apiextensions rules over the WarpRun CRD.

The test API server admits every create and every update, so these costs add to each write the
operator's tests make.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes_validate  # noqa: E402

from kwarp.core.crd import crd  # noqa: E402
from kwarp.core.plan import Task  # noqa: E402
from kwarp.core.spec import parse  # noqa: E402
from kwarp.operator.jobs import WorkerSettings, job_manifest  # noqa: E402
from tests import apiextensions, customresource, k8s_openapi, kube_admission  # noqa: E402
from tests.test_spec import doc  # noqa: E402


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: builds caches where there are any
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    run = parse({**doc(), "metadata": {"name": "gemma-warp", "namespace": "team-a"}})
    job = job_manifest(run, "0b6f8d2e-5c43-4e57-a3a4-3f0a3c1d2e11", Task.train(0, 0), 0,
                       WorkerSettings(image="registry.example/kwarp-worker:1.0"))
    version = kube_admission.BUILTIN_VERSION
    definition = crd()
    schema = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    warprun = {**doc(), "metadata": {"name": "gemma-warp", "namespace": "team-a"}}

    baseline = median_ms(lambda: kubernetes_validate.validate(job, version, strict=True), max(args.repeat // 10, 5))
    cached = median_ms(lambda: k8s_openapi.errors(job, version), args.repeat)
    admit_job = median_ms(lambda: kube_admission.builtin_errors(job, namespaced=True), args.repeat)
    admit_run = median_ms(lambda: customresource.admit(warprun, schema, field_validation="Strict"), args.repeat)
    crd_rules = median_ms(lambda: apiextensions.validate_crd(definition), max(args.repeat // 10, 5))

    print(f"Kubernetes {version} schemas, one operator Job ({len(str(job))} characters of JSON):")
    print(f"  kubernetes_validate.validate (baseline)  {baseline:8.2f} ms/object")
    print(f"  cached validator                         {cached:8.2f} ms/object   {baseline / cached:6.0f}x faster")
    print(f"  emulator admission of the Job            {admit_job:8.2f} ms/object")
    print(f"  a WarpRun through its CRD schema         {admit_run:8.2f} ms/object")
    print(f"  apiextensions rules, the WarpRun CRD     {crd_rules:8.2f} ms/CRD")


if __name__ == "__main__":
    main()
