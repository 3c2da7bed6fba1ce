"""The operator while the run's store is unreachable: suspend, resume and delete still act, promptly.

    API server   tests/kube.py's emulator, over HTTP; kopf runs in-process
    store        the moto S3 server, reached by the operator through FaultyProxy (tests/s3server.py):
                 first forwarding, then resetting every connection ("down": a MinIO that restarts, a
                 closed port) or accepting and never answering ("blackhole": a firewall, a hung server)

The tests do the tasks' work by publishing their outputs straight to the S3 server (not through the
proxy). Nothing asserts time: the bounds are asserted as behaviour, by counting the connections that
reached the proxy during the outage (the operator's breaker lets one bounded operation through).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kwarp.core.crd import crd
from kwarp.core.ownership import store_key
from kwarp.core.plan import checkpoint_outputs
from kwarp.core.spec import StorageSpec
from kwarp.core.weights import save_state_dict
from kwarp.operator import conditions as C
from kwarp.operator.store_bounds import RETRY
from kwarp.store import layout
from kwarp.store.s3 import S3Store

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for
from .operator_harness import (
    NS,
    WAIT,
    Api,
    job_run,
    jobs_named,
    options,
    phase_is,
    posted,
    s3_secret,
    warprun,
)
from .s3server import FaultyProxy, S3Server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def publish(store: S3Store, job: dict[str, Any], tmp: Path) -> None:
    """What the Job's task publishes, straight into the bucket."""
    run, task = job_run(job)
    for key in checkpoint_outputs(run.spec, store_key(run), task):
        local = tmp / key
        save_state_dict({"weight": torch.full((4,), float(task.iteration))}, local, meta={"task": task.id})
        store.put_checkpoint(local, key)


def add_secret(api: Api) -> None:
    api.core.create_namespaced_secret(NS, s3_secret())


@pytest.mark.parametrize("fault", ["down", "blackhole"])
def test_suspend_resume_and_delete_act_while_the_store_is_unreachable(tmp_path: Path, s3: S3Server, fault: str) -> None:
    bucket = s3.create_bucket()
    with FaultyProxy(s3.port) as proxy, Cluster(tmp_path / "cluster", crds=[crd()]) as cluster:
        api = Api(cluster)
        add_secret(api)
        storage = {"url": f"s3://{bucket}/runs", "endpoint": proxy.endpoint, "secure": False,
                   "region": "us-east-1", "secretName": "kwarp-s3"}  # fmt: skip
        direct = S3Store.from_url(storage["url"], StorageSpec.model_validate({**storage, "endpoint": s3.endpoint}),
                                  env=s3.env())  # fmt: skip
        doc = warprun(tmp_path, cleanup="Delete", storage=storage)
        # The breaker waits longer than this test runs: every connection during the outage is counted.
        opts = options(cleanup_grace_seconds=1, store_retry_after_seconds=3600)
        with StatusJobRunner(cluster) as runner, RunningOperator(cluster, opts):
            api.create(doc)
            prepare = jobs_named(api, "demo-prepare")["demo-prepare"]
            publish(direct, prepare, tmp_path / "out")
            runner.succeed("demo-prepare")
            jobs_named(api, "demo-i0-m0", "demo-i0-m1")
            phase_is(api, "Training")
            wait_for(lambda: len(runner.running()) == 2, WAIT, message="members running")

            proxy.reset_counters()
            if fault == "blackhole":
                proxy.blackhole()
            else:
                proxy.cut_after(0)  # every connection reset as soon as it carries a byte

            api.patch_spec({"suspend": True})
            wait_for(lambda: all(j["spec"].get("suspend") for j in api.jobs().values() if "-i0-m" in j["metadata"]["name"]),
                     30, message=lambda: f"member Jobs suspended; status {json.dumps(api.status())[:1500]}")  # fmt: skip
            phase_is(api, "Suspended")
            unavailable = api.condition(C.STORE_UNAVAILABLE)
            assert unavailable is not None and unavailable["status"] == "True", (proxy.connections, proxy.dropped, api.status()["conditions"])
            assert proxy.endpoint in unavailable["message"]
            assert api.condition(C.SUSPENDED)["status"] == "True"  # type: ignore[index]
            wait_for(lambda: not runner.running(), WAIT, message="the runner stopped the pods")

            api.patch_spec({"suspend": False})
            wait_for(lambda: not any(j["spec"].get("suspend") for j in api.jobs().values()), WAIT, message="Jobs resumed")
            phase_is(api, "Training")
            assert api.condition(C.STORE_UNAVAILABLE)["status"] == "True"  # type: ignore[index]
            assert api.condition(C.SUSPENDED)["status"] == "False"  # type: ignore[index]
            assert sorted(api.jobs()) == ["demo-i0-m0", "demo-i0-m1", "demo-prepare"]  # nothing started on a guess

            folder = api.folder()  # the run's own folder: default/demo/<uid>
            api.delete()
            wait_for(lambda: api.get() is None, 60, message=lambda: f"the WarpRun gone; events {api.events()}")
            assert api.jobs() == {}
            posted(api, "CheckpointsRetained", text=f"s3://{bucket}/runs/{folder}/")

            # One bounded operation reached the endpoint; every other store call of every reconcile and
            # of the cleanup was refused by the breaker without a connection.
            assert 1 <= proxy.connections <= RETRY.max_attempts, proxy.connections

        # cleanup could not delete: the data is still there, whole.
        assert direct.has_checkpoint(layout.base(folder))
