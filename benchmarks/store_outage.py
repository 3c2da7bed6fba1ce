"""Benchmark: how long one operator reconcile takes while the run's S3 store is unreachable.

    python benchmarks/store_outage.py [--fault down|blackhole] [--reconciles 4] [--limit 200]

A WarpRun is brought to Training against the API server emulator (tests/kube.py) and the moto S3
server behind tests/s3server.py's FaultyProxy, by calling the operator's Reconciler directly (no kopf:
the reconcile is what a handler thread runs). Then the proxy fails ("down": every connection reset;
"blackhole": accepted, never answered), spec.suspend is set, and --reconciles reconciles are timed, with
the number of connections that reached the proxy and whether the member Jobs were suspended.
A reconcile still running after --limit seconds is reported as such (it holds a handler thread that
long). Figures are printed, never asserted; run it on two versions of the operator to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402
import torch  # noqa: E402

from kwarp.core.crd import crd  # noqa: E402
from kwarp.core.spec import StorageSpec  # noqa: E402
from kwarp.core.weights import save_state_dict  # noqa: E402
from kwarp.operator.jobs import WorkerSettings  # noqa: E402
from kwarp.operator.kube import Kube  # noqa: E402
from kwarp.operator.reconcile import Reconciler  # noqa: E402
from kwarp.operator.stores import StoreOpener  # noqa: E402
from kwarp.store import layout  # noqa: E402
from kwarp.store.s3 import S3Store  # noqa: E402
from tests.kube import Cluster  # noqa: E402
from tests.operator_harness import NS, Api, s3_secret, warprun  # noqa: E402
from tests.s3server import FaultyProxy, S3Server  # noqa: E402


def timed(fn, limit: float) -> tuple[float | None, BaseException | None]:
    """Seconds fn took (None past `limit`: it is left running in a daemon thread), and what it raised."""
    box: dict[str, object] = {}

    def target() -> None:
        start = time.perf_counter()
        try:
            fn()
        except BaseException as err:  # reported, not raised
            box["error"] = err
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    return box.get("seconds"), box.get("error")  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault", choices=["down", "blackhole"], default="down")
    parser.add_argument("--reconciles", type=int, default=4)
    parser.add_argument("--limit", type=float, default=200.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, S3Server() as s3, FaultyProxy(s3.port) as proxy, \
            Cluster(Path(tmp) / "cluster", crds=[crd()]) as cluster:  # fmt: skip
        bucket = s3.create_bucket()
        api = Api(cluster)
        api.core.create_namespaced_secret(NS, s3_secret())
        storage = {"url": f"s3://{bucket}/runs", "endpoint": proxy.endpoint, "secure": False,
                   "region": "us-east-1", "secretName": "kwarp-s3"}  # fmt: skip
        direct = S3Store.from_url(storage["url"], StorageSpec.model_validate({**storage, "endpoint": s3.endpoint}),
                                  env=s3.env())  # fmt: skip
        kube = Kube(kubernetes.client.ApiClient(cluster.configuration()))
        reconciler = Reconciler(kube, WorkerSettings(image="kwarp-worker:bench"), stores=StoreOpener(kube, dict(os.environ)))
        api.create(warprun(Path(tmp), storage=storage))
        reconciler.reconcile(NS, "demo")  # creates demo-prepare
        save_state_dict({"weight": torch.zeros(4)}, Path(tmp) / "base", meta={"task": "prepare"})
        direct.put_checkpoint(Path(tmp) / "base", layout.base("demo"))
        reconciler.reconcile(NS, "demo")  # sees base: creates the member Jobs
        print(f"before the fault: Jobs {sorted(api.jobs())}")

        proxy.reset_counters()
        proxy.blackhole() if args.fault == "blackhole" else proxy.cut_after(0)
        api.patch_spec({"suspend": True})
        for n in range(args.reconciles):
            before = proxy.connections
            seconds, error = timed(lambda: reconciler.reconcile(NS, "demo"), args.limit)
            suspended = sorted(name for name, j in api.jobs().items() if j["spec"].get("suspend"))
            took = f"{seconds:6.2f} s" if seconds is not None else f"> {args.limit:.0f} s (still running)"
            print(f"reconcile {n + 1} ({args.fault}): {took}, {proxy.connections - before} connection(s), "
                  f"suspended Jobs {suspended}" + (f", raised {type(error).__name__}" if error else ""))  # fmt: skip
            if seconds is None:
                break
        conditions = {c["type"]: c["status"] for c in api.status().get("conditions", [])}
        print(f"conditions: {conditions}")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, cpus: {os.cpu_count()}")
        os._exit(0)  # a reconcile past --limit may still be blocked in a socket read


if __name__ == "__main__":
    main()
