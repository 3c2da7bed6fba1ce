"""Getting kwarp's metrics to Prometheus: a /metrics endpoint, a Pushgateway pusher, and the embedded
runner's single registry.

A trainer, merger or evaluation is a batch process: Prometheus may never scrape it before it ends. So the
tasks push their registry to a Pushgateway (every KWARP_PUSH_INTERVAL seconds and once at the end) and may
also serve /metrics (KWARP_METRICS_PORT) for a PodMonitor. Both are configured from the environment the
operator sets on each Job, through one call:

    with telemetry.export(registry, component="trainer", namespace=ns, run=run, iteration=i, member=m):
        ...the work...

Each process pushes to its own group, {job="kwarp", namespace, run, iteration, member, component}, with PUT
semantics (the group is replaced by the registry's current state), so a retried Job overwrites its
predecessor's series instead of adding to them. Groups outlive their process on purpose (the dashboard shows
a finished iteration); the operator deletes a run's groups when the WarpRun is deleted
(`delete_run_groups`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway, start_http_server

from kwarp.core.errors import UserError
from kwarp.observability.metrics import (
    EvaluationMetrics,
    MergerMetrics,
    RunMetrics,
    TrainerMetrics,
    iteration_labels,
    member_labels,
)

log = logging.getLogger(__name__)

JOB = "kwarp"  # the Pushgateway job of every kwarp group
ENV_METRICS_PORT = "KWARP_METRICS_PORT"
ENV_PUSHGATEWAY = "KWARP_PUSHGATEWAY"
ENV_PUSH_INTERVAL = "KWARP_PUSH_INTERVAL"
ENV_NAMESPACE = "KWARP_NAMESPACE"
DEFAULT_PUSH_INTERVAL = 15.0  # seconds: a common scrape interval; faster pushes only cost the gateway
DEFAULT_NAMESPACE = "default"


# --------------------------------------------------------------------------- /metrics


@dataclass
class MetricsServer:
    """A running /metrics endpoint (prometheus_client's threaded WSGI server)."""

    host: str
    port: int
    _httpd: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(registry: CollectorRegistry, port: int = 0, host: str = "0.0.0.0") -> MetricsServer:
    """Serve `registry` on http://host:port/metrics in a daemon thread; port 0 picks a free port."""
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        raise UserError(
            f"cannot serve metrics on {host}:{port} ({err.strerror or err}); "
            f"pick another port (--metrics-port or {ENV_METRICS_PORT})"
        ) from None
    return MetricsServer(host, httpd.server_address[1], httpd, thread)


# --------------------------------------------------------------------------- Pushgateway


def gateway_url(gateway: str) -> str:
    """host:port or a URL -> a URL (the Pushgateway is usually given as a bare service address)."""
    gateway = gateway.strip().rstrip("/")
    return gateway if "://" in gateway else f"http://{gateway}"


def grouping_key(
    component: str, namespace: str, run: str, iteration: int | None = None, member: int | None = None
) -> dict[str, str]:
    """The Pushgateway group of one task process. Its labels are also the metrics' own labels, so the
    gateway's consistency check holds, plus `component`, which keeps a merger's and an evaluation's groups
    of the same iteration apart."""
    key = {"namespace": namespace, "run": run, "component": component}
    if iteration is not None:
        key["iteration"] = str(iteration)
    if member is not None:
        key["member"] = str(member)
    return key


class Pusher:
    """Pushes a registry to a Pushgateway every `interval` seconds from a daemon thread, and once more on stop.

    Pushing is best effort: a gateway that is down must not kill a training run, so failures are logged
    (once per distinct error, not once per interval) and counted, and the work goes on.
    """

    def __init__(
        self,
        gateway: str,
        registry: CollectorRegistry,
        grouping: Mapping[str, str],
        *,
        interval: float = DEFAULT_PUSH_INTERVAL,
        job: str = JOB,
        timeout: float = 10.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"push interval must be positive, got {interval}")
        self.gateway = gateway_url(gateway)
        self.registry = registry
        self.grouping = dict(grouping)
        self.interval = interval
        self.job = job
        self.timeout = timeout
        self.pushes = 0
        self.failures = 0
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def push(self) -> bool:
        try:
            push_to_gateway(self.gateway, self.job, self.registry, grouping_key=self.grouping, timeout=self.timeout)
        except OSError as err:  # URLError and HTTPError are OSErrors
            self.failures += 1
            message = str(err)
            if message != self._last_error:
                log.warning("pushing metrics to %s failed: %s (will retry)", self.gateway, message)
            self._last_error = message
            return False
        self.pushes += 1
        self._last_error = None
        return True

    def start(self) -> Pusher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kwarp-metrics-push", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def stop(self) -> bool:
        """Stop the periodic pushes and push the final state; True when that last push reached the gateway."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
            self._thread = None
        return self.push()

    def __enter__(self) -> Pusher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_groups(gateway: str, *, timeout: float = 10.0) -> list[dict[str, str]]:
    """The grouping labels (job included) of every group the Pushgateway holds (its /api/v1/metrics)."""
    with urllib.request.urlopen(f"{gateway_url(gateway)}/api/v1/metrics", timeout=timeout) as resp:
        body = json.load(resp)
    return [dict(g["labels"]) for g in body.get("data", [])]


def delete_run_groups(
    gateway: str, run: str, *, namespace: str, job: str = JOB, timeout: float = 10.0
) -> int:
    """Delete every Pushgateway group of a run (all iterations, members and components); returns how many.

    The Pushgateway deletes one exact group per request, so the groups are listed first. Call it from the
    WarpRun's delete handler; a run that never pushed deletes nothing.
    """
    deleted = 0
    for labels in gateway_groups(gateway, timeout=timeout):
        if labels.get("job") != job or labels.get("namespace") != namespace or labels.get("run") != run:
            continue
        key = {k: v for k, v in labels.items() if k != "job"}
        delete_from_gateway(gateway_url(gateway), job, grouping_key=key, timeout=timeout)
        deleted += 1
    return deleted


# --------------------------------------------------------------------------- configuration from the environment


@dataclass(frozen=True)
class TelemetryConfig:
    """What the environment asks for: a /metrics port, a Pushgateway, and how often to push."""

    metrics_port: int | None = None
    pushgateway: str | None = None
    push_interval: float = DEFAULT_PUSH_INTERVAL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TelemetryConfig:
        env = os.environ if environ is None else environ
        port_text = env.get(ENV_METRICS_PORT, "").strip()
        interval_text = env.get(ENV_PUSH_INTERVAL, "").strip()
        try:
            port = int(port_text) if port_text else None
            if port is not None and not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise UserError(f"{ENV_METRICS_PORT}={port_text!r}: give a TCP port number (0-65535)") from None
        try:
            interval = float(interval_text) if interval_text else DEFAULT_PUSH_INTERVAL
            if not interval > 0:
                raise ValueError
        except ValueError:
            raise UserError(f"{ENV_PUSH_INTERVAL}={interval_text!r}: give a positive number of seconds") from None
        return cls(port, env.get(ENV_PUSHGATEWAY, "").strip() or None, interval)


def task_namespace(environ: Mapping[str, str] | None = None) -> str:
    """The `namespace` label of a task's metrics (the operator sets KWARP_NAMESPACE on every Job)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_NAMESPACE, "").strip() or DEFAULT_NAMESPACE


class Export:
    """Serves and/or pushes one task's registry for the life of a `with` block (see `export`)."""

    def __init__(self, registry: CollectorRegistry, grouping: Mapping[str, str], config: TelemetryConfig) -> None:
        self.registry = registry
        self.grouping = dict(grouping)
        self.config = config
        self.server: MetricsServer | None = None
        self.pusher: Pusher | None = None

    def __enter__(self) -> Export:
        if self.config.metrics_port is not None:
            self.server = serve(self.registry, self.config.metrics_port)
        if self.config.pushgateway:
            self.pusher = Pusher(
                self.config.pushgateway, self.registry, self.grouping, interval=self.config.push_interval
            ).start()
        return self

    def push_now(self) -> bool:
        """Push outside the schedule (e.g. right after the last step, before a long checkpoint upload)."""
        return self.pusher.push() if self.pusher else False

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Also on failure: the final push records how far the task got, which is what a person debugging wants.
        if self.pusher is not None:
            self.pusher.stop()
        if self.server is not None:
            self.server.close()


def export(
    registry: CollectorRegistry,
    *,
    component: str,
    namespace: str,
    run: str,
    iteration: int | None = None,
    member: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Export:
    """The one call a task makes: serve on KWARP_METRICS_PORT if set, push to KWARP_PUSHGATEWAY if set
    (every KWARP_PUSH_INTERVAL seconds, default 15, and once at the end). Neither set: does nothing."""
    config = TelemetryConfig.from_env(environ)
    return Export(registry, grouping_key(component, namespace, run, iteration, member), config)


# --------------------------------------------------------------------------- the embedded runner


class EmbeddedMetrics:
    """Every series of one run on one registry: what `kwarp run --metrics-port` serves, so the cluster's
    dashboard and alerts work unchanged on one machine.

    The runner feeds it what the task processes report (a trainer's step record: a metrics.jsonl line or a
    progress line; merge.json; eval.json) and the run's phase. Children need no port or gateway of their own.
    """

    def __init__(self, namespace: str, run: str, registry: CollectorRegistry | None = None) -> None:
        self.namespace = namespace
        self.run = run
        self.registry = registry or CollectorRegistry()
        self.trainer = TrainerMetrics.create(self.registry)
        self.merger = MergerMetrics.create(self.registry)
        self.evaluation = EvaluationMetrics.create(self.registry)
        self.state = RunMetrics.create(self.registry)
        self._last_step: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()

    def start_member(self, iteration: int, member: int, steps_target: int, step: int = 0) -> None:
        self.trainer.start(member_labels(self.namespace, self.run, iteration, member), steps_target, step)

    def record_step(self, iteration: int, member: int, record: Mapping[str, Any]) -> bool:
        """Record a trainer's step record once: a record without a newer `step` than the last one seen (a
        repeated progress line, a status line) is ignored, so counters count steps. True when recorded."""
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            return False
        labels = member_labels(self.namespace, self.run, iteration, member)
        with self._lock:
            if step <= self._last_step.get((iteration, member), float("-inf")):
                return False
            self._last_step[(iteration, member)] = step
            steps = record.get("steps")
            if isinstance(steps, int) and not isinstance(steps, bool):
                self.trainer.steps_target.labels(**labels).set(steps)
            self.trainer.record_step(labels, record)
        return True

    def record_merge(self, iteration: int, summary: Mapping[str, Any]) -> None:
        self.merger.record_merge(iteration_labels(self.namespace, self.run, iteration), summary)

    def record_eval(self, iteration: int, evaluation: Mapping[str, Any]) -> None:
        self.evaluation.record_eval(iteration_labels(self.namespace, self.run, iteration), evaluation)

    def record_export(self, record: Mapping[str, Any]) -> None:
        """The run's export.json (what the export task chose and measured), as the operator's status.export."""
        eta, measured = record.get("eta"), record.get("measured")
        if isinstance(eta, int | float) and not isinstance(eta, bool) and isinstance(measured, Mapping):
            self.state.set_export(self.namespace, self.run, float(eta), _number(measured.get("reward")),
                                  _number(measured.get("kl")))  # fmt: skip

    def set_phase(self, phase: str, iteration: int | None) -> None:
        self.state.set(self.namespace, self.run, phase, iteration)

    def set_progress(self, steps_done: int, steps_total: int, completion: float | None) -> None:
        self.state.set_progress(self.namespace, self.run, steps_done, steps_total, completion)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
