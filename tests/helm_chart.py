"""The Helm chart as the tests see it: loaded and rendered by Helm's own library (PyPI helm-python-sdk, Helm v4's
Go SDK), the values scenarios every test renders under, and helpers that pick rendered objects apart.
tests/test_chart.py and tests/test_chart_security.py test the chart; tests/test_rbac.py,
tests/test_api_validity.py and tests/test_operator_guardrails.py render it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's library) is not installed")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kwarp"
EXAMPLES = ROOT / "examples"
RELEASE, NAMESPACE = "kwarp", "kwarp"

# ------------------------------------------------------------------------------ scenarios

MONITORS_ON = {
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "prometheusRule": {"enabled": True},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "monitors-on": MONITORS_ON,
    "monitors-off": {
        "metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": False}},
        "grafanaDashboard": {"enabled": False},
        "networkPolicy": {"enabled": False},
    },
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}, **MONITORS_ON},
    "namespaced-no-discovery": {"operator": {"watchNamespaces": ["team-a"]}, "rbac": {"discovery": False}},
    "replicas-2": {"operator": {"replicas": 2}},
    "standalone": {"peering": {"enabled": False}},
    "s3-secret-created": {"s3": {"endpoint": "minio.kwarp.svc.cluster.local:9000", "secure": False,
                                 "accessKey": "kwarp", "secretKey": "not-a-real-secret"}},
    "s3-existing-secret": {"s3": {"endpoint": "minio.kwarp.svc.cluster.local:9000", "existingSecret": "kwarp-s3"}},
    "digests": {"image": {"digest": "sha256:" + "a" * 64}, "workers": {"image": {"digest": "sha256:" + "b" * 64}}},
    "private-registry": {"imagePullSecrets": [{"name": "regcred"}],
                         "workers": {"serviceAccount": {"imagePullSecrets": [{"name": "regcred"}],
                                                        "namespaces": ["research"]}}},
    "worker-defaults": {"workers": {"defaults": {"trainer": {
        "gpus": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }}}},
}
EXAMPLE_VALUES = sorted(EXAMPLES.glob("values-*.yaml"))


def example_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


ALL_SCENARIOS: dict[str, dict[str, Any]] = {
    **SCENARIOS,
    **{f"example:{p.name}": example_values(p) for p in EXAMPLE_VALUES},
}

# ------------------------------------------------------------------------------ helpers


def loaded_chart() -> Iterator[Any]:
    """Generator for a pytest fixture: `chart = pytest.fixture(scope="module")(loaded_chart)`."""
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart_obj: Any, values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out), parsed as Kubernetes would."""
    out: list[dict[str, Any]] = []
    for name, text in sorted(chart_obj.render(dict(values or {}), name=RELEASE, namespace=namespace).items()):
        if name.endswith("NOTES.txt"):
            continue
        out += [d for d in yaml.safe_load_all(text) if d]
    return out


def notes(chart_obj: Any, values: Mapping[str, Any] | None = None) -> str:
    rendered = chart_obj.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE)
    return next(t for n, t in rendered.items() if n.endswith("NOTES.txt"))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        path = POD_TEMPLATE_PATHS.get(d["kind"])
        if path is None:
            continue
        spec: Any = d
        for key in path:
            spec = spec[key]
        yield f"{d['kind']}/{d['metadata']['name']}", spec


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND every matchExpression)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def expand(table: Mapping[tuple[str, str], tuple[str, ...]]) -> set[Grant]:
    return {(g, r, v) for (g, r), verbs in table.items() for v in verbs}
