"""The chart's security, as a cluster admin relies on it: every pod runs non-root on a read-only root
filesystem with no capabilities; RBAC is exactly what the operator needs, with no wildcard; the rendered
manifests pass a static security scan (checkov).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_chart import (
    ALL_SCENARIOS,
    NAMESPACE,
    ROOT,
    SCENARIOS,
    expand,
    grants,
    loaded_chart,
    of_kind,
    one,
    pod_specs,
    render,
)

chart = pytest.fixture(scope="module")(loaded_chart)


# What the operator does with the API: kopf (watches, finalizer and progress annotations by PATCH,
# core/v1 Events by POST) and kwarp.operator.kube (merge-patch status, list/create/patch/delete
# Jobs, list pods, create a multi-node member's Service). tests/test_rbac.py checks it against the calls
# a running operator makes; docs/cluster.md ("RBAC, verb by verb") names the code behind each. The chart must grant exactly this, no more (least
# privilege) and no less (a missing verb is a 403 at run time).
OPERATOR_NEEDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("kwarp.dev", "warpruns"): ("list", "watch", "patch"),  # the reconciler reads runs from kopf's watch
    ("kwarp.dev", "warpruns/status"): ("patch",),
    ("kwarp.dev", "warpruns/finalizers"): ("update",),
    ("batch", "jobs"): ("list", "watch", "create", "patch", "delete"),
    ("", "pods"): ("list",),
    ("", "services"): ("create",),
    ("", "events"): ("create",),
}
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings"): ("list", "watch", "patch")}
NAMESPACED_PEERING = {("kopf.dev", "kopfpeerings"): ("list", "watch", "patch")}
# kopf lists and watches these (kopf/_core/reactor/observation.py); it never gets one by name.
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch")}
NAMESPACE_DISCOVERY = {("", "namespaces"): ("list", "watch")}

# ------------------------------------------------------------------------------ pod security


@pytest.mark.parametrize("scenario", sorted(ALL_SCENARIOS))
def test_every_container_is_locked_down(chart: Any, scenario: str) -> None:
    specs = list(pod_specs(render(chart, ALL_SCENARIOS[scenario])))
    assert specs, "no pod template rendered"
    for where, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            what = f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, what
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, what
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert not sc.get("privileged", False), what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("capabilities", {}).get("add"), what
            assert c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), what
            assert c.get("livenessProbe") and c.get("readinessProbe"), what


def test_writable_paths_are_volumes(chart: Any) -> None:
    """With a read-only root, HOME/KWARP_CACHE (/scratch, as the image sets) and /tmp must be mounts."""
    deployment = one(render(chart), "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/scratch", "/tmp"} <= mounts
    image_env = dockerfile_env()
    assert image_env["HOME"] == "/scratch" and image_env["KWARP_CACHE"].startswith("/scratch/")


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


# ------------------------------------------------------------------------------ RBAC


@pytest.mark.parametrize("scenario", sorted(ALL_SCENARIOS))
def test_no_rbac_wildcards(chart: Any, scenario: str) -> None:
    for d in render(chart, ALL_SCENARIOS[scenario]):
        for rule in d.get("rules", []) if d["kind"] in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{d['kind']}/{d['metadata']['name']}: {rule}"
            assert not rule.get("nonResourceURLs"), rule


def test_cluster_wide_rbac_is_exactly_what_the_operator_needs(chart: Any) -> None:
    docs = render(chart)
    assert of_kind(docs, "Role") == [] and of_kind(docs, "RoleBinding") == []
    role = one(docs, "ClusterRole")
    assert grants(role["rules"]) == expand({**OPERATOR_NEEDS, **CLUSTER_PEERING, **CRD_DISCOVERY})
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kwarp", "namespace": NAMESPACE}]


def test_namespaced_rbac_is_a_role_per_watched_namespace(chart: Any) -> None:
    docs = render(chart, SCENARIOS["namespaced"])
    roles = {r["metadata"]["namespace"]: r for r in of_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        assert grants(role["rules"]) == expand({**OPERATOR_NEEDS, **NAMESPACED_PEERING}), ns
        assert bindings[ns]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": "kwarp", "namespace": NAMESPACE}]
    # Cluster-wide, only read-only discovery, and nothing at all when it is turned off.
    (discovery,) = of_kind(docs, "ClusterRole")
    assert grants(discovery["rules"]) == expand({**NAMESPACE_DISCOVERY, **CRD_DISCOVERY})
    assert {v for _, _, v in grants(discovery["rules"])} <= {"get", "list", "watch"}
    strict = render(chart, SCENARIOS["namespaced-no-discovery"])
    assert of_kind(strict, "ClusterRole") == [] and of_kind(strict, "ClusterRoleBinding") == []


def test_reading_run_secrets_is_an_opt_in_get(chart: Any) -> None:
    secrets = {("", "secrets", "get")}
    assert not grants(one(render(chart), "ClusterRole")["rules"]) & {("", "secrets", v) for v in ("get", "list", "watch")}
    # Cluster-wide: never in the ClusterRole; a Role (get only) in each listed namespace, and no list, no default.
    docs = render(chart, {"rbac": {"readRunSecrets": True, "secretNamespaces": ["team-a", "team-b"]}})
    assert grants(one(docs, "ClusterRole")["rules"]) == expand({**OPERATOR_NEEDS, **CLUSTER_PEERING, **CRD_DISCOVERY})
    roles = {r["metadata"]["namespace"]: r for r in of_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        assert grants(role["rules"]) == secrets, ns
        assert bindings[ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": "kwarp", "namespace": NAMESPACE}]
    with pytest.raises(Exception, match="rbac.secretNamespaces"):
        render(chart, {"rbac": {"readRunSecrets": True}})  # every namespace's Secrets: refused
    namespaced = render(chart, {"operator": {"watchNamespaces": ["team-a"]}, "rbac": {"readRunSecrets": True}})
    assert secrets <= grants(one(namespaced, "Role")["rules"])
    assert not any(r for _, r, _ in grants(one(namespaced, "ClusterRole")["rules"]) if r == "secrets")


def test_peering_drops_out_of_rbac_when_standalone(chart: Any) -> None:
    docs = render(chart, SCENARIOS["standalone"])
    assert not any(g == "kopf.dev" for g, _, _ in grants(one(docs, "ClusterRole")["rules"]))
    assert of_kind(docs, "ClusterKopfPeering") == []


def test_worker_service_account_has_no_token_and_no_role(chart: Any) -> None:
    for scenario, namespaces in (("default", {"kwarp"}), ("namespaced", {"team-a", "team-b"})):
        docs = render(chart, SCENARIOS[scenario])
        workers = [sa for sa in of_kind(docs, "ServiceAccount") if sa["metadata"]["name"] == "kwarp-worker"]
        assert {sa["metadata"]["namespace"] for sa in workers} == namespaces, scenario
        assert all(sa["automountServiceAccountToken"] is False for sa in workers)
        bound = {s["name"] for d in docs if d["kind"].endswith("RoleBinding") for s in d["subjects"]}
        assert "kwarp-worker" not in bound


def test_worker_service_account_in_extra_namespaces(chart: Any) -> None:
    docs = render(chart, {"workers": {"serviceAccount": {"namespaces": ["research", "kwarp"]}}})
    workers = [sa for sa in of_kind(docs, "ServiceAccount") if sa["metadata"]["name"] == "kwarp-worker"]
    assert sorted(sa["metadata"]["namespace"] for sa in workers) == ["kwarp", "research"]


def test_worker_pull_secrets_go_on_the_worker_service_account_in_every_namespace(chart: Any) -> None:
    """Task pods run as the worker ServiceAccount, so Kubernetes adds its imagePullSecrets to each of them; the
    top-level imagePullSecrets stay on the operator's pod only."""
    docs = render(chart, SCENARIOS["private-registry"])
    workers = {sa["metadata"]["namespace"]: sa for sa in of_kind(docs, "ServiceAccount")
               if sa["metadata"]["name"] == "kwarp-worker"}  # fmt: skip
    assert sorted(workers) == ["kwarp", "research"]
    assert all(sa["imagePullSecrets"] == [{"name": "regcred"}] for sa in workers.values())
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    default = [sa for sa in of_kind(render(chart, {}), "ServiceAccount") if sa["metadata"]["name"] == "kwarp-worker"]
    assert default and all("imagePullSecrets" not in sa for sa in default)


# ------------------------------------------------------------------------------ static security scan


def checkov_binary() -> str | None:
    """checkov conflicts with the test environment's pins, so it may live in its own virtualenv."""
    candidates = [os.environ.get("KWARP_CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov"),
                  shutil.which("checkov"), str(Path(sys.executable).parent / "checkov")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def test_rendered_manifests_pass_checkov(chart: Any, tmp_path: Path) -> None:
    checkov = checkov_binary()
    if checkov is None:
        pytest.skip("checkov is not installed (pip install checkov into .venv-checkov/ or set KWARP_CHECKOV)")
    for scenario, values in ALL_SCENARIOS.items():
        for i, doc in enumerate(render(chart, values)):
            (tmp_path / f"{scenario.replace(':', '_')}-{i:02d}-{doc['kind']}.yaml").write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json",
         "--skip-download"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    results = report["results"]
    failed = [(c["check_id"], c["check_name"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100  # it did scan the objects
    # Every exception carries its reason in the manifest itself.
    for c in results["skipped_checks"]:
        comment = c["check_result"].get("suppress_comment") or ""
        assert len(comment) > 20 and comment != "No comment provided", c["check_id"]
