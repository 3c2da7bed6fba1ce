"""The chart's RBAC is exactly what the operator asks of the API server: no verb granted and unused,
none used and not granted.

The operator (kopf in-process, with its own bearer token) takes a run through every path that talks
to the API: peering, create, Jobs created (with blockOwnerDeletion owner references), a member that
fails (its pods listed for the reason) and is retried, multi-node members (their headless Services), suspend and resume (Jobs patched), an S3 store
whose credentials come from the Secret the run names, Events, status patches, and deletion with
`cleanup: Delete` (Jobs deleted, finalizer removed). The API server emulator records what each request
would ask an authorizer (tests/kube_server.py `ApiServer.audit`); the chart is rendered with helm for the same
mode, and the two sets are compared rule by rule, per namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kwarp.core.crd import crd
from kwarp.core.spec import StorageSpec
from kwarp.store.s3 import S3Store

from .helm_chart import RELEASE, grants, helm, of_kind, render
from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for
from .operator_harness import NS, ROOT, WAIT, Api, jobs_named, options, phase_is, s3_secret, warprun
from .s3server import S3Server
from .test_operator_outage import publish

OPERATOR_TOKEN = "kwarp-operator-token"
CHART = ROOT / "charts" / "kwarp"
Call = tuple[str, str, str, str]  # (apiGroup, resource, verb, namespace; "" when cluster-scoped)


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as c:
        yield c


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def operator_calls(tmp_path: Path, s3: S3Server, *, clusterwide: bool) -> set[Call]:
    """Every (group, resource, verb, namespace) the operator asked for while taking a run through its life."""
    peering_crds = [d for d in yaml.safe_load_all((ROOT / "operator" / "peering_crds.yaml").read_text()) if d]
    bucket = s3.create_bucket()
    with Cluster(tmp_path / "cluster", crds=[crd(), *peering_crds]) as cluster:
        if clusterwide:
            cluster.raw("POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
                        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": RELEASE}})  # fmt: skip
        else:
            cluster.raw("POST", f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings",
                        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": RELEASE}})  # fmt: skip
        api = Api(cluster)
        api.core.create_namespaced_secret(NS, s3_secret())
        storage = {"url": f"s3://{bucket}/runs", "endpoint": s3.endpoint, "secure": False, "region": "us-east-1",
                   "secretName": "kwarp-s3"}  # fmt: skip
        direct = S3Store.from_url(storage["url"], StorageSpec.model_validate(storage), env=s3.env())

        def as_operator() -> kubernetes.client.Configuration:
            cfg = cluster.configuration()
            cfg.api_key = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
            cfg.refresh_api_key_hook = None  # the kubeconfig loader's hook would put the tester's token back
            return cfg

        opts = options(namespaces=[] if clusterwide else [NS], standalone=None, peering=RELEASE)
        with StatusJobRunner(cluster) as runner, RunningOperator(cluster, opts, configuration=as_operator):
            # Multi-node members: each member Job comes with its headless Service (services: create).
            api.create(warprun(tmp_path, cleanup="Delete", storage=storage, resources={"trainer": {"nodes": 2}}))
            publish(direct, jobs_named(api, "demo-prepare")["demo-prepare"], tmp_path / "out")
            runner.succeed("demo-prepare")
            jobs_named(api, "demo-i0-m0", "demo-i0-m1")
            wait_for(lambda: "demo-i0-m1" in runner.running(), WAIT, message="i0-m1 running")
            runner.fail("demo-i0-m1", exit_code=137, message="Killed")
            jobs_named(api, "demo-i0-m1-r1")
            api.patch_spec({"suspend": True})
            phase_is(api, "Suspended")
            api.patch_spec({"suspend": False})
            phase_is(api, "Training")
            api.delete()
            wait_for(lambda: api.get() is None and not api.jobs(), WAIT, message="the WarpRun and its Jobs gone")
        assert cluster.server is not None
        return {(g, r, v, ns) for token, g, r, v, ns in cluster.server.audit if token == OPERATOR_TOKEN}


def granted(docs: list[dict[str, Any]]) -> tuple[set[tuple[str, str, str]], dict[str, set[tuple[str, str, str]]]]:
    """(what ClusterRoles grant everywhere, what Roles grant per namespace), for the operator's account."""
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace"))
             for b in docs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
             if any(s["name"] == RELEASE for s in b["subjects"])}  # fmt: skip
    everywhere = {g for r in of_kind(docs, "ClusterRole") if ("ClusterRole", r["metadata"]["name"], None) in bound
                  for g in grants(r["rules"])}  # fmt: skip
    per_ns: dict[str, set[tuple[str, str, str]]] = {}
    for r in of_kind(docs, "Role"):
        ns = r["metadata"]["namespace"]
        if ("Role", r["metadata"]["name"], ns) in bound:
            per_ns.setdefault(ns, set()).update(grants(r["rules"]))
    return everywhere, per_ns


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_the_chart_grants_exactly_the_calls_the_operator_makes(tmp_path: Path, s3: S3Server, chart: Any, mode: str) -> None:
    clusterwide = mode == "cluster-wide"
    values: dict[str, Any] = {"rbac": {"readRunSecrets": True}}
    if clusterwide:
        values["rbac"]["secretNamespaces"] = [NS]
    else:
        values["operator"] = {"watchNamespaces": [NS]}
    everywhere, per_ns = granted(render(chart, values))
    calls = operator_calls(tmp_path, s3, clusterwide=clusterwide)

    used_not_granted = sorted(c for c in calls if c[:3] not in everywhere and c[:3] not in per_ns.get(c[3], set()))
    assert used_not_granted == [], f"the operator needs, and the chart does not grant: {used_not_granted}"
    used = {c[:3] for c in calls}
    unused = sorted(everywhere - used) + sorted((ns, *g) for ns, gs in per_ns.items() for g in gs
                                                if (*g, ns) not in calls)  # fmt: skip
    assert unused == [], f"the chart grants, and the operator never uses: {unused}"
