"""`kwarp operator`: run the kopf operator that reconciles WarpRuns into Jobs.

    kwarp operator --all-namespaces --peering kwarp --worker-image registry/kwarp-worker:0.1.0
    kwarp operator --namespace team-a --namespace team-b --standalone

In a pod it uses the service account; elsewhere $KUBECONFIG. Every flag about the worker pods has
an environment variable, so that a Deployment can set them from its values (docs/internals.md,
"Operator RBAC" and "Operator settings").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Mapping

from kwarp.core.errors import UserError
from kwarp.core.spec import DNS_1123_LABEL

from .app import (
    DEFAULT_WORKER_IMAGE,
    OperatorOptions,
    env_int,
    forwarded_env,
    guardrails_from,
    serve,
    worker_defaults,
)
from .jobs import WorkerSettings


def register(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="serve WarpRuns of this namespace (repeat for several)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="serve WarpRuns of every namespace (the default without --namespace)")
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="port of the Prometheus /metrics endpoint; 0 disables it (default 8080)")
    parser.add_argument("--liveness-port", type=int, default=8081,
                        help="port of kopf's liveness endpoint /healthz; 0 disables it (default 8081)")
    parser.add_argument("--bind-address", default="0.0.0.0", help="address both endpoints listen on")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME",
                         help="kopf peering object: a second operator with the same name pauses (needs the "
                              "KopfPeering CRDs, operator/peering_crds.yaml)")
    peering.add_argument("--standalone", action="store_true", help="no peering: the only operator")
    parser.add_argument("--priority", type=int, default=None, help="kopf peering priority (higher wins)")
    parser.add_argument("--worker-image", default=env.get("KWARP_WORKER_IMAGE"),
                        help="image of trainer, merger and evaluation pods (env KWARP_WORKER_IMAGE; "
                             "a WarpRun's spec.resources.<role>.image wins)")
    parser.add_argument("--worker-service-account", default=env.get("KWARP_WORKER_SERVICE_ACCOUNT"),
                        help="service account of worker pods (env KWARP_WORKER_SERVICE_ACCOUNT)")
    parser.add_argument("--job-ttl-seconds", type=int, default=None,
                        help="ttlSecondsAfterFinished of the Jobs (env KWARP_JOB_TTL_SECONDS; default: keep them)")
    parser.add_argument("--worker-metrics-port", type=int, default=None,
                        help="port a task serves /metrics on, KWARP_METRICS_PORT in its pod "
                             "(env KWARP_WORKER_METRICS_PORT; default 9400)")
    parser.add_argument("--storage-secret", default=env.get("KWARP_STORAGE_SECRET"),
                        help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for runs that name none in "
                             "spec.storage.secretName; it must exist in the run's namespace "
                             "(env KWARP_STORAGE_SECRET)")
    parser.add_argument("--progress-seconds", type=float, default=None,
                        help="read each run's training metrics from its store at most this often, for its "
                             "progress and ETA (env KWARP_PROGRESS_SECONDS; default 30)")
    parser.add_argument("--queue-name", default=env.get("KWARP_QUEUE_NAME"),
                        help="Kueue LocalQueue of the Jobs of runs that name none (env KWARP_QUEUE_NAME; "
                             "default: no Kueue)")
    parser.add_argument("--storage-allowed-prefix", action="append", default=[], metavar="URL",
                        help="a run's spec.storage.url must lie under one of these (repeat for several; env "
                             "KWARP_STORAGE_ALLOWED_PREFIXES, comma-separated); default: anywhere")
    parser.add_argument("--resync-seconds", type=float, default=None,
                        help="reconcile every run at least this often (env KWARP_RESYNC_SECONDS; default 60)")
    parser.add_argument("--cleanup-grace-seconds", type=float, default=None,
                        help="cleanup: Delete waits this long for an unreachable store, then keeps the run's data "
                             "and lets the WarpRun go (env KWARP_CLEANUP_GRACE_SECONDS; default 300)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.set_defaults(func=_run)


def options_from(args: argparse.Namespace, env: Mapping[str, str]) -> OperatorOptions:
    ttl = args.job_ttl_seconds if args.job_ttl_seconds is not None else env_int(env, "KWARP_JOB_TTL_SECONDS")
    metrics_port = args.worker_metrics_port or env_int(env, "KWARP_WORKER_METRICS_PORT") or 9400
    resync = args.resync_seconds or float(env.get("KWARP_RESYNC_SECONDS") or 60)
    progress = args.progress_seconds
    progress = float(env.get("KWARP_PROGRESS_SECONDS") or 30) if progress is None else progress
    grace = args.cleanup_grace_seconds
    grace = float(env.get("KWARP_CLEANUP_GRACE_SECONDS") or 300) if grace is None else grace
    if resync <= 0 or (ttl is not None and ttl < 0) or grace < 0 or progress < 0:
        raise UserError("--resync-seconds must be positive, --job-ttl-seconds and --cleanup-grace-seconds non-negative")
    worker = WorkerSettings(
        image=args.worker_image or DEFAULT_WORKER_IMAGE,
        service_account=args.worker_service_account or None,
        ttl_seconds_after_finished=ttl,
        metrics_port=metrics_port,
        storage_secret=args.storage_secret or None,
        defaults=worker_defaults(env.get("KWARP_WORKER_DEFAULTS")),
        env=forwarded_env(env),
        queue_name=args.queue_name or None,
    )
    return OperatorOptions(
        namespaces=namespace_names(args.namespace),
        metrics_port=args.metrics_port or None,
        liveness_port=args.liveness_port or None,
        bind_address=args.bind_address,
        peering=args.peering,
        standalone=True if args.standalone else None,
        priority=args.priority,
        resync_seconds=resync,
        worker=worker,
        storage_secret=args.storage_secret or None,
        cleanup_grace_seconds=grace,
        guardrails=guardrails_from(env.get("KWARP_GUARDRAILS")),
        progress_seconds=progress,
        storage_prefixes=tuple(args.storage_allowed_prefix) or allowed_prefixes(env),
    )


def namespace_names(given: list[str]) -> list[str]:
    """--namespace values, each a namespace's name, once each. kopf would also take patterns ('team-*', '!x'),
    but the Jobs are listed and watched per namespace (operator/informer.py) and the chart grants a Role in each
    named namespace, so a pattern would serve WarpRuns whose Jobs nobody watches: refused here instead."""
    for ns in given:
        if len(ns) > 63 or not DNS_1123_LABEL.fullmatch(ns):
            raise UserError(f"--namespace: '{ns}' is not a namespace name (lowercase letters, digits and '-', at most "
                            "63 characters; patterns are not supported: list each namespace)")  # fmt: skip
    return list(dict.fromkeys(given))


def allowed_prefixes(env: Mapping[str, str]) -> tuple[str, ...]:
    """KWARP_STORAGE_ALLOWED_PREFIXES: comma-separated storage URLs (s3://bucket/prefix, /abs/path)."""
    raw = env.get("KWARP_STORAGE_ALLOWED_PREFIXES") or ""
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    for p in prefixes:
        if not (p.startswith(("s3://", "file:///")) or p.startswith("/")):
            raise UserError(f"KWARP_STORAGE_ALLOWED_PREFIXES: '{p}' is neither s3://bucket/prefix nor an absolute path")
    return prefixes


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.INFO)
        logging.getLogger("kopf._core").setLevel(logging.WARNING)
    options = options_from(args, os.environ)
    asyncio.run(serve(options))
    return 0
