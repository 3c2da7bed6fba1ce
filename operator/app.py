"""Wiring of the operator: settings, the Kubernetes client, the reconciler, the handlers, the endpoints.

`serve(options)` runs until stopped, in the current event loop: `kwarp operator` runs it in the main
thread (SIGTERM/SIGINT stop it); tests run it in a thread and stop it with `stop_flag`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes

from kwarp import __version__
from kwarp.core.errors import UserError
from kwarp.core.guardrails import Guardrails
from kwarp.core.resources import PodResources
from kwarp.core.spec import API_GROUP, KIND

from . import collector, handlers
from .collector import CollectionPolicy
from .diffbase import RunEssence
from .informer import JobInformers
from .jobindex import JobIndex
from .jobrecord import job_record
from .jobs import WorkerSettings
from .kube import Kube
from .metrics import MetricsServer
from .observe import read_alike
from .reconcile import Reconciler
from .runcache import RunCache
from .store_bounds import BREAKER_COOLDOWN_S, Breakers
from .stores import StoreOpener

log = logging.getLogger(__name__)

DEFAULT_WORKER_IMAGE = f"kwarp-worker:{__version__}"
ROLES = ("trainer", "merger", "evaluation")
# Operator environment that every task container receives as well: the store's endpoint and TLS
# setting and where to push metrics are the same for the operator and its workers.
FORWARDED_ENV = ("KWARP_S3_ENDPOINT", "KWARP_S3_SECURE", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "KWARP_PUSHGATEWAY", "KWARP_PUSH_INTERVAL")  # fmt: skip


@dataclass
class OperatorOptions:
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    metrics_port: int | None = 8080  # None: no /metrics endpoint
    liveness_port: int | None = 8081  # None: no liveness endpoint
    bind_address: str = "0.0.0.0"
    peering: str | None = None
    standalone: bool | None = None  # None: kopf decides (peering if its CRDs exist)
    priority: int | None = None
    resync_seconds: float = 60.0
    worker: WorkerSettings = field(default_factory=lambda: WorkerSettings(image=DEFAULT_WORKER_IMAGE))
    storage_secret: str | None = None
    # Where runs may keep their data (Helm storage.allowedPrefixes); empty: anywhere.
    storage_prefixes: tuple[str, ...] = ()
    max_workers: int = 8  # threads running reconciles (of different runs, in parallel)
    cleanup_grace_seconds: float = 300.0  # cleanup: Delete waits this long for an unreachable store
    guardrails: Guardrails = field(default_factory=Guardrails)  # what a WarpRun may choose (KWARP_GUARDRAILS)
    progress_seconds: float = 30.0  # a run's metrics are read from the store at most this often (progress, ETA)
    store_retry_after_seconds: float = BREAKER_COOLDOWN_S  # an unreachable S3 endpoint is not asked again before
    # The garbage collector in the operator's process (operator/collector.py); None: left as it is.
    collections: CollectionPolicy | None = field(default_factory=CollectionPolicy)


def worker_defaults(raw: str | None) -> dict[str, PodResources]:
    """KWARP_WORKER_DEFAULTS: JSON {role: spec.resources.<role>-shaped settings}, roles trainer/merger/evaluation."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise UserError(f"KWARP_WORKER_DEFAULTS is not JSON: {err}") from None
    if not isinstance(data, dict) or set(data) - set(ROLES):
        raise UserError(f"KWARP_WORKER_DEFAULTS must map some of {', '.join(ROLES)} to pod settings, got {raw!r}")
    try:
        return {r: PodResources.model_validate(v) for r, v in data.items()}
    except ValueError as err:
        raise UserError(f"KWARP_WORKER_DEFAULTS: {err}") from None


def guardrails_from(raw: str | None) -> Guardrails:
    """KWARP_GUARDRAILS: JSON of kwarp.core.guardrails.Guardrails (the chart's guardrails.* values); unset:
    the defaults, which allow a run no image, ServiceAccount, priority class, toleration or node selector
    of its own, only the bundled reward callables, and no trustRemoteCode."""
    if not raw:
        return Guardrails()
    try:
        return Guardrails.model_validate_json(raw)
    except ValueError as err:
        raise UserError(f"KWARP_GUARDRAILS: {err}") from None


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: env[k] for k in FORWARDED_ENV if env.get(k)}


def kopf_settings(options: OperatorOptions) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's bookkeeping under kwarp's own prefix, in annotations (the status schema is kwarp's).
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    # WarpRuns' essences only (the one kind with changing handlers and timers), built without a copy of the
    # status: operator/diffbase.py.
    settings.persistence.diffbase_storage = RunEssence(
        prefix=API_GROUP, key="last-handled-configuration", tracked={(API_GROUP, KIND)}
    )
    # Log lines do not become Events below WARNING: the reconciler posts the Events users need.
    settings.posting.level = logging.WARNING
    # kopf's handler threads run only the delete-time cleanup now (the other handlers queue a reconcile
    # in the event loop; reconciles have the reconciler's own threads).
    settings.execution.max_workers = 4
    # Reconnect watches now and then, as real API servers drop long ones anyway.
    settings.watching.server_timeout = 600
    return settings


def kube_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account, else $KUBECONFIG (read now, not when the client library was imported)."""
    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    except kubernetes.config.ConfigException:
        path = os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            kubernetes.config.load_kube_config(config_file=path, client_configuration=cfg)
        except (kubernetes.config.ConfigException, OSError) as err:
            raise UserError(
                f"no Kubernetes credentials: not in a cluster and no usable kubeconfig at {path} ({err})"
            ) from None
    return cfg


def build(options: OperatorOptions, *, configuration: Callable[[], kubernetes.client.Configuration] = kube_configuration,
          metrics: MetricsServer | None = None,
          env: Mapping[str, str] | None = None) -> tuple[kopf.OperatorRegistry, Reconciler]:  # fmt: skip
    registry, reconciler, _ = assemble(options, configuration=configuration, metrics=metrics, env=env)
    return registry, reconciler


def assemble(options: OperatorOptions, *, configuration: Callable[[], kubernetes.client.Configuration] = kube_configuration,
             metrics: MetricsServer | None = None,
             env: Mapping[str, str] | None = None) -> tuple[kopf.OperatorRegistry, Reconciler, JobInformers]:  # fmt: skip
    """The registry, the reconciler and the Jobs' informers (which `serve` stops if kopf's cleanup did not)."""
    kube = Kube(kubernetes.client.ApiClient(configuration()))
    reconciler = Reconciler(
        kube,
        options.worker,
        stores=StoreOpener(kube, env, default_secret=options.storage_secret,
                           breakers=Breakers(cooldown_s=options.store_retry_after_seconds)),
        allowed_prefixes=options.storage_prefixes,
        metrics=metrics.metrics if metrics else None,
        events=post_event,
        guardrails=options.guardrails,
        progress_seconds=options.progress_seconds,
        job_index=JobIndex(same=read_alike, keep=job_record),
        runs=RunCache(),
        workers=options.max_workers,
    )
    registry = kopf.OperatorRegistry()
    informers = handlers.register(registry, reconciler, configuration, namespaces=options.namespaces,
                                  resync_seconds=options.resync_seconds,
                                  cleanup_grace_seconds=options.cleanup_grace_seconds)  # fmt: skip
    return registry, reconciler, informers


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(body), type=type_, reason=reason, message=message)


async def serve(options: OperatorOptions, *, stop_flag: threading.Event | asyncio.Event | None = None,
                ready_flag: threading.Event | asyncio.Event | None = None,
                configuration: Callable[[], kubernetes.client.Configuration] = kube_configuration) -> None:  # fmt: skip
    metrics = MetricsServer(options.metrics_port, options.bind_address).start() if options.metrics_port is not None else None
    reconciler: Reconciler | None = None
    informers: JobInformers | None = None
    try:
        # The reconciler starts its queue at the first event, the informers at kopf's startup.
        registry, reconciler, informers = assemble(options, configuration=configuration, metrics=metrics)
        collector.apply(options.collections)  # modules imported, handlers built: freeze what lives as long as the process
        liveness = (
            f"http://{options.bind_address}:{options.liveness_port}/healthz" if options.liveness_port is not None else None
        )
        log.info(
            "kwarp operator %s: %s, worker image %s%s", __version__,
            f"namespaces {', '.join(options.namespaces)}" if options.namespaces else "all namespaces",
            options.worker.image, f", metrics on :{metrics.port}" if metrics else "",
        )  # fmt: skip
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(options),
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            standalone=options.standalone,
            peering_name=options.peering,
            priority=options.priority,
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if informers is not None:  # stopped by kopf's cleanup too, unless kopf failed before that
            informers.stop(timeout=10)
        if reconciler is not None:
            reconciler.queue.stop(timeout=10)
        if metrics is not None:
            metrics.stop()


def env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None
