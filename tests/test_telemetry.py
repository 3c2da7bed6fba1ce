"""kwarp.observability.telemetry against a real Pushgateway (Debian's, see tests/prom.py): periodic and final
pushes, a gateway that is down, deleting a run's groups, configuration from the environment, and the
/metrics endpoint serving only catalogue names.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kwarp.core.errors import UserError
from kwarp.observability import telemetry
from kwarp.observability.metrics import (
    RUN_PHASES,
    MergerMetrics,
    OperatorMetrics,
    TrainerMetrics,
    catalogue_by_series,
    iteration_labels,
    member_labels,
)
from tests.kube import wait_for, wait_value
from tests.prom import Pushgateway, free_port, http_get


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    gw = Pushgateway.start(tmp_path)
    yield gw
    gw.stop()


def _gateway_value(gw: Pushgateway, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(gw.exposition()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_pusher_pushes_periodically(pushgateway: Pushgateway) -> None:
    registry = CollectorRegistry()
    metrics = TrainerMetrics.create(registry)
    labels = member_labels("ns", "r", 0, 1)
    key = telemetry.grouping_key("trainer", "ns", "r", 0, 1)
    with telemetry.Pusher(pushgateway.address, registry, key, interval=0.1) as pusher:
        for step in (1, 2, 3):  # each value reaches the gateway while the pusher runs
            metrics.step.labels(**labels).set(step)
            deadline = time.monotonic() + 10
            while _gateway_value(pushgateway, "kwarp_trainer_step", labels) != step and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _gateway_value(pushgateway, "kwarp_trainer_step", labels) == step
    assert pusher.failures == 0 and pusher.pushes >= 3


def test_pusher_pushes_the_final_state_at_stop(pushgateway: Pushgateway) -> None:
    registry = CollectorRegistry()
    metrics = TrainerMetrics.create(registry)
    labels = member_labels("ns", "r", 0, 1)
    pusher = telemetry.Pusher(
        pushgateway.address, registry, telemetry.grouping_key("trainer", "ns", "r", 0, 1), interval=3600
    ).start()
    metrics.step.labels(**labels).set(7)
    time.sleep(0.2)
    assert _gateway_value(pushgateway, "kwarp_trainer_step", labels) is None  # the first push is an hour away
    assert pusher.stop()
    assert _gateway_value(pushgateway, "kwarp_trainer_step", labels) == 7
    assert pusher.pushes == 1


def test_pusher_survives_a_gateway_that_is_down() -> None:
    registry = CollectorRegistry()
    TrainerMetrics.create(registry).step.labels(**member_labels("ns", "r", 0, 0)).set(3)
    pusher = telemetry.Pusher(f"127.0.0.1:{free_port()}", registry, {"run": "r"}, interval=0.05, timeout=1)
    with pusher:  # (a pusher whose thread raised would try no more: the wait would time out)
        wait_for(lambda: pusher.failures >= 2, 30, message=lambda: f"two failed pushes; {pusher.failures}")
    assert pusher.pushes == 0 and pusher.failures >= 2  # kept trying, never raised


def test_delete_run_groups_removes_only_that_run(pushgateway: Pushgateway) -> None:
    # One registry per task, as in a pod: a registry holding another member's series is refused (400).
    for ns, run, m in (("a", "one", 0), ("a", "one", 1), ("a", "two", 0), ("b", "one", 0)):
        registry = CollectorRegistry()
        TrainerMetrics.create(registry).step.labels(**member_labels(ns, run, 0, m)).set(1)
        assert telemetry.Pusher(pushgateway.address, registry, telemetry.grouping_key("trainer", ns, run, 0, m)).push()
    assert telemetry.Pusher(pushgateway.address, CollectorRegistry(), telemetry.grouping_key("merger", "a", "one", 0)).push()
    assert len(pushgateway.groups()) == 5

    assert telemetry.delete_run_groups(pushgateway.address, "one", namespace="a") == 3
    # The gateway answers a DELETE with 202 and applies it from its write queue: a listing right after
    # can still hold the group (seen under load), so wait until it is gone.
    left = wait_value(lambda: sorted((g["labels"]["namespace"], g["labels"]["run"]) for g in pushgateway.groups()),
                      lambda groups: len(groups) == 2, 30, message=lambda: f"the deletions applied: {pushgateway.groups()}")
    assert left == [("a", "two"), ("b", "one")]
    assert telemetry.delete_run_groups(f"http://{pushgateway.address}/", "one", namespace="a") == 0


def test_export_is_configured_from_the_environment(pushgateway: Pushgateway) -> None:
    registry = CollectorRegistry()
    metrics = MergerMetrics.create(registry)
    labels = iteration_labels("ns", "r", 2)
    env = {"KWARP_METRICS_PORT": "0", "KWARP_PUSHGATEWAY": pushgateway.address, "KWARP_PUSH_INTERVAL": "30"}
    with telemetry.export(registry, component="merger", namespace="ns", run="r", iteration=2, environ=env) as ex:
        metrics.bytes_processed.labels(**labels).inc(4096)
        assert ex.server is not None
        scraped = http_get(ex.server.url).decode()
        assert 'kwarp_merger_processed_bytes_total{iteration="2",namespace="ns",run="r"} 4096.0' in scraped
        assert _gateway_value(pushgateway, "kwarp_merger_processed_bytes_total", labels) is None  # 30 s away
    # Leaving the block pushed the final state and closed the endpoint.
    assert _gateway_value(pushgateway, "kwarp_merger_processed_bytes_total", labels) == 4096
    with pytest.raises(OSError):
        urllib.request.urlopen(ex.server.url, timeout=1)

    quiet = telemetry.export(registry, component="merger", namespace="ns", run="r", environ={})
    with quiet:
        assert quiet.server is None and quiet.pusher is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KWARP_METRICS_PORT": "ninety"}, "KWARP_METRICS_PORT"),
        ({"KWARP_METRICS_PORT": "70000"}, "KWARP_METRICS_PORT"),
        ({"KWARP_PUSH_INTERVAL": "0"}, "KWARP_PUSH_INTERVAL"),
        ({"KWARP_PUSH_INTERVAL": "soon"}, "KWARP_PUSH_INTERVAL"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        telemetry.TelemetryConfig.from_env(env)


def test_serve_exposes_catalogue_names() -> None:
    registry = CollectorRegistry()
    operator = OperatorMetrics.create(registry)
    operator.observe_run("ns", "r", "Training", 0)
    operator.reconcile_errors.labels(reason="Conflict").inc()
    server = telemetry.serve(registry, 0, host="127.0.0.1")
    try:
        families = {f.name: f for f in text_string_to_metric_families(http_get(server.url).decode())}
    finally:
        server.close()
    by_series = catalogue_by_series()
    for family in families.values():
        for s in family.samples:
            if not s.name.endswith("_created"):
                assert s.name in by_series, s.name
    runs = {s.labels["phase"]: s.value for s in families["kwarp_operator_runs"].samples}
    assert runs == {p: (1.0 if p == "Training" else 0.0) for p in RUN_PHASES}
    operator.forget_run("ns", "r")
    assert registry.get_sample_value("kwarp_run_phase", {"namespace": "ns", "run": "r", "phase": "Training"}) is None
    assert registry.get_sample_value("kwarp_operator_runs", {"namespace": "ns", "phase": "Training"}) == 0
