"""The Helm chart, rendered and linted by Helm's own library (PyPI helm-python-sdk, Helm v4's Go SDK).

What a cluster admin relies on: the chart lints clean and renders under every toggle; the values
schema rejects wrong values; the operator gets the settings the chart gives it; the CRD is the generated
one; the monitoring objects select what they should. Pod security, RBAC and the static security scan:
tests/test_chart_security.py; the scenarios and helpers: tests/helm_chart.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_chart import (
    ALL_SCENARIOS,
    CHART,
    EXAMPLES,
    MONITORS_ON,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    env_of,
    example_values,
    helm,
    loaded_chart,
    notes,
    of_kind,
    one,
    operator_container,
    render,
    selector_matches,
)

chart = pytest.fixture(scope="module")(loaded_chart)


# ------------------------------------------------------------------------------ lint and render


@pytest.mark.parametrize("scenario", sorted(ALL_SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, ALL_SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 = info ("icon is recommended")
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@pytest.mark.parametrize("scenario", sorted(ALL_SCENARIOS))
def test_renders_well_formed_objects(chart: Any, scenario: str) -> None:
    docs = render(chart, ALL_SCENARIOS[scenario])
    assert docs, "the chart rendered nothing"
    seen: set[tuple[str, str, str | None]] = set()
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d
        meta = d["metadata"]
        name = meta["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) and len(name) <= 63, name
        cluster_scoped = d["kind"] in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "Namespace"}
        assert ("namespace" in meta) != cluster_scoped, f"{d['kind']}/{name}: namespace {meta.get('namespace')!r}"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        key = (d["kind"], name, meta.get("namespace"))
        assert key not in seen, f"rendered twice: {key}"
        seen.add(key)


def test_default_install_objects(chart: Any) -> None:
    """One replica, cluster-wide, no Prometheus Operator objects (they need its CRDs)."""
    got = sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in render(chart))
    expected = [
        ("ClusterKopfPeering", "kwarp", None),
        ("ClusterRole", "kwarp", None),
        ("ClusterRoleBinding", "kwarp", None),
        ("Deployment", "kwarp", "kwarp"),
        ("NetworkPolicy", "kwarp", "kwarp"),
        ("Service", "kwarp-metrics", "kwarp"),
        ("ServiceAccount", "kwarp", "kwarp"),
        ("ServiceAccount", "kwarp-worker", "kwarp"),
    ]
    if (CHART / "files" / "dashboard.json").is_file():
        expected.append(("ConfigMap", "kwarp-dashboard", "kwarp"))
    assert got == sorted(expected)


def test_operator_args_cluster_wide(chart: Any) -> None:
    c = operator_container(render(chart))
    assert c["args"] == [
        "operator", "--all-namespaces", "--metrics-port", "8080", "--liveness-port", "8081",
        "--peering", "kwarp", "--worker-image", "kwarp-worker:0.1.0",
    ]
    assert c["image"] == "kwarp-operator:0.1.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "liveness": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}


def test_operator_args_namespaced_and_standalone(chart: Any) -> None:
    values = {"operator": {"watchNamespaces": ["team-a", "team-b"], "metricsPort": 9100},
              "peering": {"enabled": False}, "workers": {"image": {"repository": "reg.example/kwarp-worker", "tag": "1.2.3"}}}
    c = operator_container(render(chart, values))
    assert c["args"] == [
        "operator", "--namespace", "team-a", "--namespace", "team-b", "--metrics-port", "9100",
        "--liveness-port", "8081", "--standalone", "--worker-image", "reg.example/kwarp-worker:1.2.3",
    ]


def test_operator_args_parse_with_the_operator_cli(chart: Any) -> None:
    """The Deployment's args are `kwarp operator` flags the operator's own parser accepts."""
    from kwarp.cli import build_parser

    try:
        parser = build_parser("operator")
    except ModuleNotFoundError as err:
        pytest.skip(f"kwarp.operator.cli is not written yet ({err})")
    for values in (SCENARIOS["default"], SCENARIOS["namespaced"], SCENARIOS["standalone"]):
        args = operator_container(render(chart, values))["args"]
        assert args[0] == "operator"
        parser.parse_args(args[1:])  # argparse exits (SystemExit) on an unknown flag


FULL_OPERATOR_SETTINGS = {
    "operator": {"watchNamespaces": ["team-a"], "metricsPort": 9100, "resyncSeconds": 30},
    "peering": {"name": "kwarp-prod"},
    "workers": {"image": {"repository": "reg.example/kwarp-worker", "tag": "1.2.3"}, "storageSecret": "kwarp-s3",
                "metricsPort": 9500, "jobTtlSeconds": 86400, **SCENARIOS["worker-defaults"]["workers"]},
    "s3": {"endpoint": "minio.kwarp.svc.cluster.local:9000", "secure": False, "region": "eu-west-1",
           "existingSecret": "kwarp-s3"},
    "metrics": {"pushgateway": {"url": "http://pushgateway.monitoring:9091", "interval": 30}},
    "kueue": {"queueName": "team-a-gpu"},
    "storage": {"allowedPrefixes": ["s3://kwarp/runs", "s3://kwarp/scratch/team-a"]},
}


def test_the_operator_reads_the_settings_the_chart_gives_it(chart: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployment args and env, through the operator's own CLI parsing, give the values' settings."""
    from kwarp.cli import build_parser

    container = operator_container(render(chart, FULL_OPERATOR_SETTINGS))
    env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}  # secretKeyRef/fieldRef come from the API
    for name in [n for n in os.environ if n.startswith(("KWARP_", "AWS_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():  # the process environment of the pod, as the CLI reads it
        monkeypatch.setenv(name, value)
    try:
        parser = build_parser("operator")
        from kwarp.operator.cli import options_from
    except ModuleNotFoundError as err:
        pytest.skip(f"kwarp.operator.cli is not written yet ({err})")
    options = options_from(parser.parse_args(container["args"][1:]), env)
    assert options.namespaces == ["team-a"]
    assert (options.metrics_port, options.liveness_port, options.peering, options.resync_seconds) == (9100, 8081, "kwarp-prod", 30)
    worker = options.worker
    assert worker.image == "reg.example/kwarp-worker:1.2.3"
    assert (worker.service_account, worker.metrics_port, worker.ttl_seconds_after_finished) == ("kwarp-worker", 9500, 86400)
    assert options.storage_secret == worker.storage_secret == "kwarp-s3"
    assert worker.queue_name == "team-a-gpu"
    assert options.storage_prefixes == ("s3://kwarp/runs", "s3://kwarp/scratch/team-a")
    trainer = worker.defaults["trainer"]
    assert trainer.gpus == 1 and trainer.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [t.key for t in trainer.tolerations] == ["nvidia.com/gpu"]
    # What the operator passes on to every task container.
    assert worker.env == {"KWARP_S3_ENDPOINT": "minio.kwarp.svc.cluster.local:9000", "KWARP_S3_SECURE": "false",
                          "AWS_REGION": "eu-west-1", "KWARP_PUSHGATEWAY": "http://pushgateway.monitoring:9091",
                          "KWARP_PUSH_INTERVAL": "30"}


def test_images_by_digest_win_over_tags(chart: Any) -> None:
    c = operator_container(render(chart, SCENARIOS["digests"]))
    assert c["image"] == "kwarp-operator@sha256:" + "a" * 64
    assert c["args"][c["args"].index("--worker-image") + 1] == "kwarp-worker@sha256:" + "b" * 64


def test_operator_env(chart: Any) -> None:
    env = env_of(operator_container(render(chart, SCENARIOS["worker-defaults"])))
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf's peering identity
    assert env["KWARP_WORKER_SERVICE_ACCOUNT"] == "kwarp-worker"
    assert json.loads(env["KWARP_WORKER_DEFAULTS"]) == SCENARIOS["worker-defaults"]["workers"]["defaults"]
    # Nothing configured, nothing set: the store's own defaults (and each run's spec) apply.
    plain = env_of(operator_container(render(chart)))
    assert not {"KWARP_WORKER_DEFAULTS", "KWARP_S3_ENDPOINT", "KWARP_S3_SECURE", "AWS_ACCESS_KEY_ID",
                "KWARP_QUEUE_NAME", "KWARP_STORAGE_ALLOWED_PREFIXES"} & set(plain)


# ------------------------------------------------------------------------------ values schema

BAD_VALUES = [
    ({"operator": {"replicas": "two"}}, "/operator/replicas"),
    ({"replicaCount": 1}, "replicaCount"),
    ({"operator": {"replica": 1}}, "replica"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
    ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"s3": {"endpoint": "http://minio:9000"}}, "/s3/endpoint"),
    ({"s3": {"secure": "no"}}, "/s3/secure"),
    ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval"),
    ({"workers": {"defaults": {"trainer": {"gpu": 1}}}}, "gpu"),
    ({"workers": {"defaults": {"trainer": {"tolerations": [{"effect": "Sometimes"}]}}}}, "effect"),
    ({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}, "/grafanaDashboard/labels/grafana_dashboard"),
    ({"kueue": {"queueName": "Team A"}}, "/kueue/queueName"),
    ({"storage": {"allowedPrefixes": ["kwarp/runs"]}}, "/storage/allowedPrefixes/0"),
    ({"storage": {"allowedPrefixes": ["s3://a,s3://b"]}}, "/storage/allowedPrefixes/0"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_wrong_values(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(values))
    assert where in str(err.value)
    with pytest.raises(helm.HelmValuesError):  # and an install with them would fail the same way
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("scenario", sorted(ALL_SCENARIOS))
def test_schema_accepts_the_documented_values(chart: Any, scenario: str) -> None:
    chart.validate_schema(chart.merge_values(ALL_SCENARIOS[scenario]))


def test_every_value_has_a_comment() -> None:
    """values.yaml documents each value: a comment right above its key or above an enclosing key
    (the entries of a documented map, such as resources.requests.cpu, share their map's comment)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    enclosing: list[tuple[int, bool]] = []  # (indent, documented) of the mapping keys above this line
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w./-]*):(\s.*)?$", line)
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2), (m.group(3) or "").strip()
        while enclosing and enclosing[-1][0] >= indent:
            enclosing.pop()
        documented = (i > 0 and lines[i - 1].strip().startswith("#")) or any(d for _, d in enclosing)
        if value and not value.startswith("#"):
            if not documented:
                undocumented.append(key)
        else:
            enclosing.append((indent, documented))
    assert undocumented == []


def test_schema_covers_every_default_value(chart: Any) -> None:
    """values.schema.json names every key of values.yaml (additionalProperties: false would reject it otherwise)."""
    schema = chart.schema

    def walk(values: Mapping[str, Any], node: Mapping[str, Any], path: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        props = node.get("properties", {})
        for key, value in values.items():
            if node.get("additionalProperties") is False:
                assert key in props, f"{path}{key} is missing from values.schema.json"
            if isinstance(value, Mapping) and key in props:
                walk(value, props[key], f"{path}{key}.")

    walk(chart.values, schema, "")


# ------------------------------------------------------------------------------ CRDs and peering


def test_warprun_crd_is_the_generated_one(chart: Any) -> None:
    from kwarp.core.cli_spec import render_crd_yaml

    assert (CHART / "crds" / "warprun.yaml").read_text() == render_crd_yaml()
    loaded = {d["metadata"]["name"] for c in chart.crds for d in yaml.safe_load_all(c["data"]) if d}
    assert {"warpruns.kwarp.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= loaded


def test_kopf_peering_crds_declare_what_kopf_uses() -> None:
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()) if d}
    for name, scope, kind in (("clusterkopfpeerings.kopf.dev", "Cluster", "ClusterKopfPeering"),
                              ("kopfpeerings.kopf.dev", "Namespaced", "KopfPeering")):
        spec = docs[name]["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        (version,) = spec["versions"]
        assert version["name"] == "v1" and version["storage"] and version["served"]
        # kopf keeps its keep-alives in .status: the schema must not prune them.
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_kopf_peering_crds_are_the_operators_own() -> None:
    """The chart installs the operator's own peering CRDs (operator/peering_crds.yaml), as they are."""
    theirs = ROOT / "operator" / "peering_crds.yaml"
    if not theirs.is_file():
        pytest.skip("operator/peering_crds.yaml does not exist: the chart's crds/kopf-peering.yaml is the only copy")
    assert (CHART / "crds" / "kopf-peering.yaml").read_text() == theirs.read_text()


def test_peering_object_matches_the_operator_flag(chart: Any) -> None:
    docs = render(chart, {"peering": {"name": "kwarp-prod"}})
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "kwarp-prod"
    args = operator_container(docs)["args"]
    assert args[args.index("--peering") + 1] == "kwarp-prod"
    namespaced = render(chart, SCENARIOS["namespaced"])
    assert sorted(p["metadata"]["namespace"] for p in of_kind(namespaced, "KopfPeering")) == ["team-a", "team-b"]
    assert of_kind(namespaced, "ClusterKopfPeering") == []


def test_replicas_get_a_disruption_budget_and_never_overlap(chart: Any) -> None:
    single = render(chart)
    assert of_kind(single, "PodDisruptionBudget") == []  # one replica: a PDB would only block drains
    assert one(single, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    docs = render(chart, SCENARIOS["replicas-2"])
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(pdb["spec"]["selector"], pod_labels)
    assert "pause" in notes(chart, SCENARIOS["replicas-2"])


# ------------------------------------------------------------------------------ S3 credentials


def test_s3_secret_created_from_values(chart: Any) -> None:
    docs = render(chart, SCENARIOS["s3-secret-created"])
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "kwarp-s3"
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "kwarp", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    env = env_of(operator_container(docs))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "kwarp-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "kwarp-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["KWARP_S3_ENDPOINT"] == "minio.kwarp.svc.cluster.local:9000"
    assert env["KWARP_S3_SECURE"] == "false"
    # The operator restarts when the credentials change.
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/s3-secret"])


def test_existing_s3_secret_wins_and_nothing_is_created(chart: Any) -> None:
    values = {"s3": {**SCENARIOS["s3-existing-secret"]["s3"], "accessKey": "ignored", "secretKey": "ignored",
                     "accessKeyIdKey": "rootUser", "secretAccessKeyKey": "rootPassword"}}
    docs = render(chart, values)
    assert of_kind(docs, "Secret") == []
    env = env_of(operator_container(docs))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "kwarp-s3", "key": "rootUser"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "kwarp-s3", "key": "rootPassword"}}
    assert "NOTE: no S3 credentials" not in notes(chart, values)
    assert "NOTE: no S3 credentials" in notes(chart)


def test_half_given_credentials_fail_the_render(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="s3.secretKey is empty"):
        chart.render({"s3": {"accessKey": "kwarp"}}, name=RELEASE, namespace=NAMESPACE)


# ------------------------------------------------------------------------------ monitoring


def test_monitors_are_off_by_default(chart: Any) -> None:
    kinds = {d["kind"] for d in render(chart)}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_service_monitor_scrapes_the_operator(chart: Any) -> None:
    docs = render(chart, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    with pytest.raises(helm.HelmRenderError, match="metrics.service.enabled"):
        chart.render({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
                     name=RELEASE, namespace=NAMESPACE)


def worker_pod_templates() -> list[dict[str, Any]]:
    """Pod templates of the Jobs the operator creates for a run, one per task kind, from its own builder."""
    try:
        from kwarp.operator.jobs import WorkerSettings, job_manifest
    except ModuleNotFoundError as err:
        pytest.skip(f"kwarp.operator.jobs is not written yet ({err})")
    from kwarp.core.plan import Task
    from kwarp.core.spec import parse

    run = parse({
        "apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {"policy": {"location": "s3://kwarp/sft"}, "reward": {"location": "s3://kwarp/rm"},
                 "data": {"train": "s3://kwarp/train.jsonl", "eval": "s3://kwarp/eval.jsonl"},
                 "storage": {"url": "s3://kwarp/runs", "endpoint": "minio:9000", "secretName": "kwarp-s3"}},
    })
    settings = WorkerSettings(image="kwarp-worker:0.1.0", service_account="kwarp-worker")
    tasks = [Task.prepare(), Task.train(0, 1), Task.merge(0), Task.eval(0)]
    return [job_manifest(run, "uid-1", t, 0, settings)["spec"]["template"] for t in tasks]


def test_pod_monitor_selects_worker_pods_not_the_operator(chart: Any) -> None:
    docs = render(chart, SCENARIOS["monitors-on"])
    monitor = one(docs, "PodMonitor")
    selector = monitor["spec"]["selector"]
    assert not selector_matches(selector, one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    for template in worker_pod_templates():
        assert selector_matches(selector, template["metadata"]["labels"]), template["metadata"]["labels"]
        port_names = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in port_names
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = one(render(chart, SCENARIOS["namespaced"]), "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """The chart without its generated files/ (dashboard, alerts), for tests that supply their own."""
    dest = tmp_path / "kwarp"
    shutil.copytree(CHART, dest, ignore=shutil.ignore_patterns("dashboard.json", "alerts.yaml"))
    return dest


ALERTS = {"groups": [{"name": "kwarp", "rules": [{
    "alert": "KwarpReconcileErrors", "expr": "rate(kwarp_operator_reconcile_errors_total[5m]) > 0",
    "for": "10m", "labels": {"severity": "warning"}, "annotations": {"summary": "reconciles fail"},
}]}]}


def test_prometheus_rule_wraps_the_alerts_file(chart_copy: Path) -> None:
    with helm.Chart.load(chart_copy) as c:
        assert of_kind(render(c, MONITORS_ON), "PrometheusRule") == []  # no alerts file yet: render still works
    (chart_copy / "files" / "alerts.yaml").write_text(yaml.safe_dump(ALERTS))
    with helm.Chart.load(chart_copy) as c:
        rule = one(render(c, {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}), "PrometheusRule")
        assert rule["spec"] == ALERTS
        assert rule["metadata"]["labels"]["release"] == "kps"
        assert of_kind(render(c), "PrometheusRule") == []


def test_dashboard_config_map_holds_the_dashboard_file(chart_copy: Path) -> None:
    with helm.Chart.load(chart_copy) as c:
        assert of_kind(render(c), "ConfigMap") == []
    dashboard = {"title": "kwarp", "uid": "kwarp", "panels": [{"type": "timeseries", "title": "Reward ≥ 0"}]}
    (chart_copy / "files" / "dashboard.json").write_text(json.dumps(dashboard, ensure_ascii=False, indent=2))
    with helm.Chart.load(chart_copy) as c:
        cm = one(render(c), "ConfigMap")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["kwarp.json"]) == dashboard
        moved = one(render(c, {"grafanaDashboard": {"namespace": "monitoring", "labels": {"dash": "yes"},
                                                    "annotations": {"grafana_folder": "kwarp"}}}), "ConfigMap")
        assert moved["metadata"]["namespace"] == "monitoring"
        assert moved["metadata"]["labels"]["dash"] == "yes"
        assert moved["metadata"]["annotations"] == {"grafana_folder": "kwarp"}
        assert of_kind(render(c, {"grafanaDashboard": {"enabled": False}}), "ConfigMap") == []


def test_the_charts_own_generated_files_render() -> None:
    """files/dashboard.json and files/alerts.yaml as the observability code generates them."""
    with helm.Chart.load(CHART) as c:
        docs = render(c, MONITORS_ON)
    dashboard, alerts = CHART / "files" / "dashboard.json", CHART / "files" / "alerts.yaml"
    if not dashboard.is_file() and not alerts.is_file():
        pytest.skip("charts/kwarp/files/ has no dashboard.json or alerts.yaml yet")
    if dashboard.is_file():
        assert json.loads(one(docs, "ConfigMap")["data"]["kwarp.json"]) == json.loads(dashboard.read_text())
    if alerts.is_file():
        assert one(docs, "PrometheusRule")["spec"]["groups"] == yaml.safe_load(alerts.read_text())["groups"]


# ------------------------------------------------------------------------------ examples


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("warprun*.yaml")), ids=lambda p: p.name)
def test_example_warprun_is_valid_and_uses_the_example_minio(path: Path) -> None:
    """Each example WarpRun validates, and stores where examples/values-minio.yaml points the operator."""
    from kwarp.core.spec import load

    run = load(path)
    minio = example_values(EXAMPLES / "values-minio.yaml")["s3"]
    storage = run.spec.storage
    assert storage.is_s3 and storage.endpoint == minio["endpoint"] and storage.secure == minio["secure"]
    assert storage.secret_name == minio["existingSecret"]
    for location in (run.spec.policy.location, run.spec.reward.location, run.spec.data.train, run.spec.data.eval):
        assert location is None or location.startswith(("s3://", "hf://")), f"{location}: pods cannot read local paths"


def test_e2e_minio_is_the_one_the_examples_name() -> None:
    """tests/e2e-kind/minio.yaml serves the endpoint and reads the Secret that the examples use."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "tests" / "e2e-kind" / "minio.yaml").read_text()) if d}
    minio = example_values(EXAMPLES / "values-minio.yaml")["s3"]
    host, port = minio["endpoint"].split(":")
    name, namespace = host.split(".")[:2]
    assert docs["Service"]["metadata"]["name"] == name
    assert int(port) in [p["port"] for p in docs["Service"]["spec"]["ports"]]
    assert re.search(rf"^NS={namespace}$", (ROOT / "tests" / "e2e-kind" / "run.sh").read_text(), re.M)
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {minio["existingSecret"]}


def test_cluster_demo_is_the_demo_tasks_own_run() -> None:
    """examples/warprun-demo.yaml runs what `make demo` runs: the demo task's WARP, training, evaluation and export."""
    try:
        from kwarp.tasks.document import warprun
    except ModuleNotFoundError as err:
        pytest.skip(f"kwarp.tasks.document is not written yet ({err})")
    from kwarp.core.spec import load, parse

    cluster = load(EXAMPLES / "warprun-demo.yaml")
    local = parse(warprun(policy="sft", reward="rm", train="train.jsonl", eval="eval.jsonl", storage="runs"))
    assert cluster.name == local.name
    for section in ("warp", "training", "evaluation", "export"):
        assert getattr(cluster.spec, section) == getattr(local.spec, section), section
    assert cluster.spec.policy.dtype == local.spec.policy.dtype
    assert all(r.gpus == 0 for r in (cluster.spec.resources.trainer, cluster.spec.resources.merger,
                                     cluster.spec.resources.evaluation))
