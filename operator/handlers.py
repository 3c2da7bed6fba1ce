"""The kopf handlers: thin triggers of the one reconcile, plus the delete-time cleanup and a probe.

    WarpRun created / resumed / spec or labels changed  -> queue a reconcile of the run
    a Job labelled kwarp.dev/run changed (any event)     -> queue a reconcile of the run that owns it
                                                            (ahead of bookkeeping if the Job finished)
    every `resync` seconds, per WarpRun (timer)          -> queue a reconcile of the run (safety net)

A queued pass that would read the run's Jobs and WarpRun as the last pass read them is skipped
(operator/passes.py), except the timer's (`force`).
    any WarpRun event                                    -> the run's cache (reconciles read the run there)
    WarpRun deleted (finalizer kwarp.dev/finalizer)      -> cleanup: Delete removes <run>/ from the store
                                                            (a store still down after the grace period:
                                                            the data stays, an Event says where)

The Jobs are not kopf's: the operator's own informer (operator/informer.py, a thread started and stopped with
kopf) watches them, updates the Job index and queues the owning run, as kopf's `on.event` handler for Jobs did
at several times the CPU per event. kopf never writes annotations or finalizers to the Jobs (the integration
tests check it). A Job event queues its run only while kopf serves that run: see `serving` below (peering).
The queueing handlers are coroutines: they run in kopf's event loop, take a lock for microseconds and return,
so no event waits for a handler thread; reconciles run on the reconciler's own threads (operator/workqueue.py).
Handlers are registered on a registry the caller owns, so that tests can start several operators in one process.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import kopf
import kubernetes

from kwarp.core.spec import API_GROUP, API_VERSION, KIND, PLURAL
from kwarp.store import StoreError

from .deletion import CleanupPending
from .informer import JobInformers
from .jobs import LABEL_RUN
from .reconcile import Reconciler, job_finished

RUNS = (API_GROUP, API_VERSION, PLURAL)


def owning_run(body: Mapping[str, Any]) -> str | None:
    """The WarpRun that controls a Job (its controller owner reference), else its run label."""
    meta = body.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/"):
            return ref.get("name")
    return (meta.get("labels") or {}).get(LABEL_RUN)


def connection_info(cfg: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from a kubernetes client configuration (the one the reconciler uses too)."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization") or ""
    parts = header.split(" ", 1)
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] or None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    configuration: Callable[[], kubernetes.client.Configuration],
    *,
    namespaces: Sequence[str] = (),
    resync_seconds: float = 60.0,
    cleanup_grace_seconds: float = 300.0,
) -> JobInformers:
    """Register the handlers; returns the Jobs' informers (started at kopf's startup, stopped at its cleanup)."""

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # Called again whenever the API answers 401: a fresh configuration re-reads a rotated token.
        return connection_info(configuration())

    def queue(namespace: str, name: str, *, urgent: bool = False, force: bool = False) -> None:
        # The reconcile threads start at the first event, in its handler's context: a reconcile posts
        # Events through kopf (kopf.event), which finds kopf's event queue in context variables that kopf
        # sets for resource handlers (not for startup handlers). Starting again is a no-op.
        reconciler.queue.start(context=contextvars.copy_context())
        reconciler.request(namespace, name, urgent=urgent, force=force)

    # The runs kopf serves now: each has the `serving` daemon while kopf processes its WarpRun. kopf stops
    # every daemon when its peering pauses the operator (another operator of higher or equal priority), when
    # the run is being deleted and when the operator exits; the fresh watch after a pause starts them again.
    # The informer queues a run only while it is served, so a paused operator starts no pass from a Job
    # event, as when kopf delivered the Job events (kopf pauses every watch). kopf 1.45 exposes its paused
    # state (`operator_paused`) to no handler or argument; its daemons' stopping on a pause is public
    # behaviour (kopf.DaemonStoppingReason.OPERATOR_PAUSING, docs "Daemons"), which this relies on:
    # tests/test_informer.py test_peering_pauses_job_driven_reconciles fails if it ends.
    served: set[tuple[str, str]] = set()

    def job_seen(job: dict[str, Any], deleted: bool) -> None:
        # On the informer's thread, for each event of a Job labelled kwarp.dev/run (a LIST's items too).
        run = owning_run(job)
        namespace = (job.get("metadata") or {}).get("namespace") or "default"
        if not run:
            return
        if reconciler.job_index is not None and not reconciler.job_index.event(namespace, run, job, deleted=deleted):
            return  # nothing a reconcile reads changed (the ADDED event of a Job a pass created, ...)
        if (namespace, run) in served:  # a set's membership: atomic under the GIL, while the loop adds and drops
            reconciler.request(namespace, run, urgent=not deleted and job_finished(job))

    informers = JobInformers(configuration, job_seen, namespaces)

    @kopf.on.startup(registry=registry)
    async def start_informing(**_: Any) -> None:
        informers.start()

    @kopf.on.cleanup(registry=registry)
    async def stop_reconciling(**_: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, informers.stop, 10.0)
        await loop.run_in_executor(None, reconciler.queue.stop, 10.0)

    @kopf.daemon(*RUNS, registry=registry, cancellation_timeout=5)
    async def serving(name: str, namespace: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        key = (namespace, name)
        served.add(key)
        try:
            # What the informer saw of the run's Jobs while it was not served (a pause, before its first sight)
            # is in the Job index: one unforced pass reads it, or is skipped if the last pass read it already.
            queue(namespace, name)
            await stopped.wait()
        finally:
            served.discard(key)

    @kopf.on.event(*RUNS, registry=registry)
    async def run_seen(body: Mapping[str, Any], type: str | None, **kwargs: Any) -> None:
        # Before the other handlers of this event (kopf calls event handlers first): a reconcile they
        # queue reads this version of the run from the cache.
        if reconciler.runs is not None:
            raw = (kwargs.get("event") or {}).get("object") or dict(body)
            if type == "DELETED":
                reconciler.runs.deleted(raw)
            elif reconciler.runs.put(raw):  # first seen: a Job event may have asked for it before
                queue(raw["metadata"].get("namespace") or "default", raw["metadata"]["name"])

    @kopf.on.resume(*RUNS, registry=registry, backoff=10)
    @kopf.on.create(*RUNS, registry=registry, backoff=10)
    @kopf.on.update(*RUNS, registry=registry, backoff=10)
    async def run_changed(name: str, namespace: str, **_: Any) -> None:
        # Not forced: run_seen has put this event's version into the cache, and a pass runs unless the run's
        # last pass read that version already (kopf's create handler often comes after the first sight's pass).
        queue(namespace, name)

    @kopf.timer(*RUNS, interval=resync_seconds, initial_delay=resync_seconds, registry=registry)
    async def resync(name: str, namespace: str, **_: Any) -> None:
        if reconciler.job_index is not None:
            reconciler.job_index.stale(namespace, name)  # LIST again: drops a Job whose deletion the watch missed
        queue(namespace, name, force=True)  # time moved: deadlines, progress from the store (operator/passes.py)

    @kopf.on.delete(*RUNS, registry=registry, backoff=2)
    def run_deleted(name: str, namespace: str, body: Mapping[str, Any], runtime: timedelta, **_: Any) -> None:
        try:
            reconciler.cleanup(namespace, name, body)
        except CleanupPending as pending:
            raise kopf.TemporaryError(str(pending), delay=2) from None
        except StoreError as err:
            # A store that stays down must not hold the WarpRun (and its namespace) forever: after the
            # grace period the checkpoints are kept, an Event says where, and the deletion completes.
            if runtime.total_seconds() < cleanup_grace_seconds:
                raise kopf.TemporaryError(f"cleanup: Delete waits for the store: {err}", delay=5) from None
            reconciler.abandon_cleanup(namespace, name, body, err)

    @kopf.on.probe(id="reconciles", registry=registry)
    def reconciles(**_: Any) -> dict[str, float]:
        return {"seconds_since_last_reconcile": round(time.monotonic() - reconciler.last_success, 1)}

    @kopf.on.probe(id="jobs_informer", registry=registry)
    def jobs_informer(**_: Any) -> dict[str, Any]:
        # A dead informer thread would leave every run to the resync timer: the probe fails (HTTP 500 from
        # kopf's liveness endpoint) and the kubelet restarts the operator. Its loop catches every error and
        # reconnects, so only a bug can end it. Permanent: kopf would retry any other error inside the probe's
        # request (its activities retry a failed handler), and the kubelet would see a timeout, not the error.
        if not informers.alive():
            raise kopf.PermanentError(f"the Jobs' informer is not running: {informers.health()}")
        return {"runs_served": len(served), "watches": informers.health()}

    return informers
