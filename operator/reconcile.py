"""One level-triggered reconcile of a WarpRun: observe, plan, act, report.

    read the WarpRun ─ validate the spec ─ settle which spec runs (accepted + safe changes)
    observe: the store (completed tasks, fronts) and the run's Jobs (attempts, failures)
    plan(spec, observed) -> actions                          (kwarp.core.plan, pure)
    act: create Jobs (409 = already there), suspend / resume Jobs
    build the status (operator.status, pure); patch it only if it changed; post Events

Every handler (WarpRun create/resume/update, a Job event, the timer) calls `reconcile(ns, name)`;
whatever triggered it, the same inputs give the same actions, so a replayed event or a restarted
operator never starts a task twice: Job names are deterministic and creating an existing one is a
no-op. Handlers only queue the run (`WorkQueue`, operator/workqueue.py): passes of one run never
overlap, the events that arrive while it waits or runs cost one more pass, and a run one of whose Jobs
finished goes ahead of bookkeeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kwarp.core.guardrails import Guardrails
from kwarp.core.owners import claim
from kwarp.core.ownership import Owner, Verdict, storage_allowed
from kwarp.core.plan import Action, Observed, Resume, Start, Succeed, Suspend, Task, plan, plan_without_store
from kwarp.core.spec import WarpRun, WarpRunSpec
from kwarp.core.status import WarpRunStatus
from kwarp.observability.metrics import OperatorMetrics
from kwarp.store import Store, StoreError, layout

from . import conditions as C
from .acceptance import effective_spec, run_document
from .admission import AdmissionWatch, observe_progress
from .deletion import delete_pushed_groups, delete_run_data, retain_run_data
from .gang import gang_views, next_attempt, per_job
from .jobindex import JobIndex
from .joblog import JobLog
from .jobs import (
    COMPONENTS,
    LABEL_RUN,
    WorkerSettings,
    gang_manifest,
    gangs_members,
    is_gang,
    job_manifest,
    needs_service,
    queue_of,
    service_manifest,
)
from .kube import Kube
from .observe import (
    JobView,
    by_task,
    failure_message,
    failure_reason_code,
    owned_by,
    pod_failure,
    task_jobs,
    view,
)
from .passes import PassLedger, Token, own_write
from .progress import ProgressTracker
from .results import RunResults
from .runcache import RunCache
from .status import (
    Observation,
    blocked_status,
    build_status,
    invalid_status,
    previous_status,
    recorded_failures,
    status_patch,
    store_down_status,
)
from .stores import StoreOpener, owner_of, store_url
from .watchdog_pass import watch_over
from .workqueue import WorkQueue

log = logging.getLogger(__name__)
GONE_KEPT = 4096  # deleted runs remembered, so that a reconcile still running when one goes exports nothing of it

EventSink = Callable[[Mapping[str, Any], str, str, str], None]
"""(WarpRun body, type Normal|Warning, reason, message) -> post a Kubernetes Event about the run."""


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------ the reconciler


@dataclass
class Outcome:
    """What one reconcile did (for logs, tests and the benchmark)."""

    phase: str | None = None
    actions: list[Action] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)  # each created Job with what it runs, for one Event
    suspended: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)  # Kueue workloads deleted by a suspend
    gangs: dict[int, str] = field(default_factory=dict)  # iteration -> its gang Job this pass created (or found)
    status_patched: bool = False
    written: str | None = None  # resourceVersion of the pass's own status write (operator/passes.own_write)


class Clock(Protocol):
    def __call__(self) -> str: ...


def _no_events(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    return None


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        worker: WorkerSettings,
        *,
        stores: StoreOpener | None = None,
        allowed_prefixes: tuple[str, ...] = (),
        metrics: OperatorMetrics | None = None,
        events: EventSink = _no_events,
        clock: Clock = now_rfc3339,
        guardrails: Guardrails | None = None,
        progress_seconds: float = 30.0,
        job_index: JobIndex | None = None,
        runs: RunCache | None = None,
        workers: int = 8,
    ):
        self.kube = kube
        self.guardrails = guardrails  # None: no limits (library use); the CLI and the chart always set them
        self.worker = worker
        self.stores = stores or StoreOpener(kube)
        # Operator setting (Helm storage.allowedPrefixes): the only places a run's storage.url may name.
        self.allowed_prefixes = tuple(allowed_prefixes)
        self._owned: set[tuple[str, str, str]] = set()  # (uid, store url, spec digest) whose record is ours
        # Uids of multi-node Jobs whose Service this operator has created or found (one POST per Job per
        # operator lifetime: a restart re-ensures them, in case the last one stopped in between).
        self._services: set[str] = set()
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.results = RunResults()
        self.progress = ProgressTracker(progress_seconds)
        self.admission = AdmissionWatch(metrics)
        self.job_log = JobLog()
        self.job_index = job_index  # None: every reconcile LISTs the run's Jobs
        self.runs = runs  # None: every reconcile GETs its run
        # Threads running reconciles (of different runs), started and stopped by the operator (app.serve).
        self.queue = WorkQueue(self._process, workers=workers)
        self.passes = PassLedger()  # what each run's last pass read: a queued pass that would read it again is skipped
        self._pass = threading.local()  # .version: the Job index's version of the run this thread's pass read
        self.last_success = time.monotonic()
        self._pod_details: dict[str, str | None] = {}  # failed Job uid -> what its pod said
        self._counted_failures: set[str] = set()  # Job uids already counted in the failures metric
        self._gone: dict[str, None] = {}  # uids of deleted runs (the latest GONE_KEPT), in deletion order
        self._lock = threading.Lock()

    # -- entry points
    def request(self, namespace: str, name: str, *, urgent: bool = False, force: bool = False) -> None:
        """Queue a reconcile of the run (once, however often asked before it starts); `urgent`: one of its
        Jobs finished, so the next task may be waiting to start; `force`: the pass runs even if the run's Jobs
        and WarpRun are as the last pass read them (time or the store may have moved: operator/passes.py).
        Thread-safe, returns at once."""
        if force:
            self.passes.force((namespace, name))
        self.queue.add((namespace, name), urgent=urgent)

    def _token(self, namespace: str, name: str) -> Token | None:
        """The versions of what a pass of the run reads, read before the pass reads them."""
        if self.job_index is None or self.runs is None:
            return None
        version = self.job_index.version(namespace, name)
        body = self.runs.get(namespace, name)
        return None if body is None else (version, body["metadata"].get("resourceVersion"))

    def _process(self, key: Any) -> None:
        token = self._token(*key)
        if not self.passes.begin(key, token):
            return  # queued by an event the last pass had already read: nothing new to read
        self._pass.version = None
        try:
            outcome = self.reconcile(*key)
        except Exception:
            self.passes.failed(key)  # the retry runs
            raise
        if token is not None and self._pass.version is not None:
            # The version the pass read the Jobs at, not the one before it started: a Job event in between
            # (while it parsed the run) was read, and must not make the next pass run again.
            token = (self._pass.version, token[1])
        self.passes.done(key, token, outcome.written if outcome is not None else None)

    def reconcile(self, namespace: str, name: str) -> Outcome | None:
        start = time.perf_counter()
        try:
            outcome = self._reconcile(namespace, name)
        except Exception as err:
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels(reason=type(err).__name__).inc()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - start)
        self.last_success = time.monotonic()
        return outcome

    def cleanup(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """On deletion: the run's data as its `cleanup` says (operator/deletion.py; raises CleanupPending
        while its Jobs stop, StoreError while the store is down), then forget the run."""
        delete_run_data(self.kube, self.stores, self.allowed_prefixes, self.events, namespace, name, body)
        self.forget(namespace, name, body.get("metadata", {}).get("uid"))

    def abandon_cleanup(self, namespace: str, name: str, body: Mapping[str, Any], err: Exception) -> None:
        """The store stayed unreachable through the cleanup grace period: keep the data, say where, let go."""
        retain_run_data(self.events, namespace, name, body, err)
        self.forget(namespace, name, body.get("metadata", {}).get("uid"))

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """Drop what is kept about a deleted run: results, the operator's own series, and the run's
        groups on the Pushgateway (which keeps every pushed group until it is deleted)."""
        if self.job_index is not None:
            self.job_index.forget(namespace, name)
        self.passes.forget((namespace, name))
        self.admission.forget(namespace, name)
        if uid:
            self.results.forget(uid)
            self.progress.forget(uid)
            self.job_log.forget(uid)
            with self._lock:
                self._owned = {o for o in self._owned if o[0] != uid}
                self._gone[uid] = None
                while len(self._gone) > GONE_KEPT:
                    del self._gone[next(iter(self._gone))]
        if self.metrics is not None:
            self.metrics.forget_run(namespace, name)
        delete_pushed_groups(self.worker.env.get("KWARP_PUSHGATEWAY"), namespace, name)

    # -- one pass
    def _run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The WarpRun: from the watch-fed cache when there is one (None: not shown by the watch yet, or
        gone; its first sighting queues a reconcile), else a GET."""
        if self.runs is not None:
            return self.runs.get(namespace, name)
        return self.kube.get_run(namespace, name)

    def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        body = self._run(namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return None  # gone, or going: the delete handler owns it now
        meta = body["metadata"]
        uid, generation = meta["uid"], meta.get("generation")
        raw_status = body.get("status") or {}
        previous = previous_status(raw_status)
        now = self.clock()

        spec, check = effective_spec(body, previous.accepted_spec, self.guardrails, self.worker.queue_name)
        if spec is None:
            status = invalid_status(previous, check, now=now, generation=generation)
            return self._report(body, previous, status, Outcome())
        if not storage_allowed(spec.storage.url, self.allowed_prefixes):
            message = (f"spec.storage.url '{spec.storage.url}' is outside the prefixes this operator allows "
                       f"({', '.join(self.allowed_prefixes)}); use a storage.url under one of them")
            status = blocked_status(previous, C.STORAGE_NOT_ALLOWED, C.OUTSIDE_ALLOWED_PREFIXES, message,
                                    now=now, generation=generation)  # fmt: skip
            return self._report(body, previous, status, Outcome())

        # Jobs before the store: a task writes its outputs before its Job completes, so a Job seen
        # Complete here has its outputs visible below. (The other order would see a Job that completed
        # after the store was read as "Complete, outputs missing", a failed attempt.)
        jobs = [j for j in self._run_jobs(namespace, name) if owned_by(j, uid)]
        views = [v for j in jobs if (v := view(j)) is not None]
        gang_jobs = [j for j in jobs if is_gang(j)]
        pods = None  # the run's pods, listed once per reconcile at most (the watchdog reads them too)
        if gang_jobs:  # a queued run's iterations: each member's tries are its index's pods (operator/gang.py)
            pods = self.kube.run_pods(namespace, name)
            views += gang_views(gang_jobs, pods, spec.failure_policy.max_retries)
        self.admission.observe(namespace, name, per_job(views))
        self._ensure_services(namespace, jobs)
        me = owner_of(namespace, name, uid, spec, now)
        folder = me.key  # the run's own folder: every key below is under it
        try:
            store = self.stores.open(namespace, spec)
            verdict = self._ownership(store, me, spec)
            if not verdict.allowed:
                status = blocked_status(previous, C.STORE_CONFLICT, verdict.reason, verdict.message,
                                        now=now, generation=generation)  # fmt: skip
                return self._report(body, previous, status, Outcome())
            key = (uid, spec.storage.url)
            done = self.results.completed(key, store, spec, folder)
        except StoreError as err:
            # Suspend and resume act on the Jobs alone; nothing starts or fails until the store answers.
            known = self.results.known((uid, spec.storage.url))
            attempts = by_task(views)
            jobs = task_jobs(attempts, known, recorded=recorded_failures(previous))
            actions = plan_without_store(spec, Observed(done=known, jobs=jobs))
            outcome = Outcome(actions=list(actions))
            run = run_document(name, namespace, spec, uid)
            for action in actions:
                self._act(body, run, uid, attempts, action, outcome)
            status = store_down_status(spec=spec, generation=generation, previous=previous, check=check, jobs=jobs,
                                       known_done=known, error=str(err), now=now)  # fmt: skip
            status = watch_over(self.kube, self.events, body, spec, None, views, status, now, pods)  # pods need no store
            return self._report(body, previous, status, outcome)

        attempts = by_task(views)
        recorded = recorded_failures(previous)
        messages = self._failure_messages(namespace, views)
        jobs = task_jobs(attempts, done, messages=messages, recorded=recorded)
        self._count_failures(views, done)

        actions = plan(spec, Observed(done=done, jobs=jobs, succeeded=previous.phase == "Succeeded"))
        outcome = Outcome(actions=list(actions))
        run = run_document(name, namespace, spec, uid)
        # A suspend withdraws Jobs still waiting in Kueue before admitted ones: deleting an admitted Job
        # first would free quota that Kueue could give to a sibling about to be withdrawn too.
        gangs = gang_jobs if gangs_members(spec, self.worker) else None
        for action in sorted(actions, key=lambda a: not (isinstance(a, Suspend) and _queued(attempts, a.task))):
            self._act(body, run, uid, attempts, action, outcome, gangs)

        if outcome.created:  # the Jobs just created, as the next observation will see them
            queue = queue_of(spec, self.worker)
            new = []
            for a in actions:
                if isinstance(a, Start):
                    gang = outcome.gangs.get(a.task.iteration) if a.task.kind == "train" else None
                    new.append(JobView(name=gang or a.task.job_name(name, a.attempt), uid="", task=a.task,
                                       attempt=a.attempt, state="Queued" if queue else "Pending", queue=queue,
                                       gang=gang is not None))  # fmt: skip
            attempts = by_task([*views, *new])
            jobs = task_jobs(attempts, done, messages=messages, recorded=recorded)

        fronts = self.results.fronts(key, store, folder, done)
        active = {t for t, j in jobs.items() if j.active}
        members = self.results.members(key, store, spec, folder, done, fronts, active)
        tracked = self.progress.view(key, store, spec, folder, done, active)
        exported = self.results.export(key, store, folder, done)
        obs = Observation(
            done=done, attempts=attempts, jobs=jobs, fronts=fronts, members=members, progress=tracked, export=exported,
        )  # fmt: skip
        status = build_status(
            run=folder, spec=spec, generation=generation, previous=previous, check=check, obs=obs,
            actions=actions, store_url=store_url(spec), now=now, queue=queue_of(spec, self.worker),
        )  # fmt: skip
        status = status.model_copy(update={"conditions": C.clear_condition(
            status.conditions, C.STORE_UNAVAILABLE, C.STORE_REACHABLE, "", now=now, generation=generation)})
        status = watch_over(self.kube, self.events, body, spec, store, views, status, now, pods)
        conds = C.clear_condition(status.conditions, C.STORE_UNAVAILABLE, C.STORE_REACHABLE, "", now=now, generation=generation)
        conds = C.clear_condition(conds, C.STORE_CONFLICT, C.STORE_OWNED, "", now=now, generation=generation)
        conds = C.clear_condition(conds, C.STORAGE_NOT_ALLOWED, C.INSIDE_ALLOWED_PREFIXES, "", now=now, generation=generation)
        status = status.model_copy(update={"conditions": conds})
        outcome = self._report(body, previous, status, outcome)
        # Bookkeeping last: the next Jobs are created and the status written before jobs.json (for
        # `kwarp report`: admissions and timings of the Jobs) is brought up to date.
        self.job_log.record(store, folder, views)
        return outcome

    def _ownership(self, store: Store, me: Owner, spec: WarpRunSpec) -> Verdict:
        """The run folder's ownership, claimed on first sight; asked of the store once per (run, spec):
        the folder's key holds the uid, so once the record is ours nothing else writes it."""
        cached = (me.uid, spec.storage.url, me.spec_digest)
        with self._lock:
            if cached in self._owned:
                return Verdict("own")
        verdict = claim(store, me, f"{store_url(spec).rstrip('/')}/{me.key}")
        if verdict.allowed:
            # The accepted document beside the record, as `kwarp run` leaves it: `kwarp export` and
            # `kwarp report` read a run's folder on their own with it.
            if not store.exists(layout.spec_json(me.key)):
                store.put_json(layout.spec_json(me.key), run_document(me.name, me.namespace, spec, me.uid).to_document())
            with self._lock:
                self._owned.add(cached)
        return verdict

    def _run_jobs(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The run's Jobs: from the watch-fed index when there is one (a LIST seeds it), else a LIST."""
        if self.job_index is None:
            return self.kube.list_jobs(namespace, name)
        jobs, self._pass.version = self.job_index.jobs_at(namespace, name)
        if jobs is None:
            items, rv = self.kube.list_jobs_at(namespace, name)
            self.job_index.seed(namespace, name, items, rv)
            jobs, self._pass.version = self.job_index.jobs_at(namespace, name)
        return jobs or []

    def _act(self, body: Mapping[str, Any], run: WarpRun, uid: str, attempts: Mapping[Task, list[JobView]],
             action: Action, outcome: Outcome, gangs: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        """Carry out one action. `gangs`: the run's gang Jobs when its members are ganged (a queued run),
        else None: a member's Start then starts its iteration's gang Job (once per pass)."""
        namespace = run.metadata.namespace or "default"
        if isinstance(action, Start) and gangs is not None and action.task.kind == "train":
            self._start_gang(body, run, uid, action.task.iteration, gangs, outcome)
        elif isinstance(action, Start):
            manifest = job_manifest(run, uid, action.task, action.attempt, self.worker)
            job = manifest["metadata"]["name"]
            if not self._create_job(namespace, manifest, action.task.kind, action.attempt):
                return  # created by an earlier pass whose Job this listing did not show yet
            outcome.created.append(job)
            kind = action.task.kind
            retry = f", retry {action.attempt} of {run.spec.failure_policy.max_retries}" if action.attempt else ""
            outcome.announced.append(f"{job} ({COMPONENTS[kind]} {action.task.id}{retry})")
        elif isinstance(action, Suspend):
            for attempt in attempts.get(action.task, []):
                if attempt.deleting or attempt.state not in ("Pending", "Queued", "Running"):
                    continue
                if attempt.name in outcome.withdrawn:  # a gang: withdrawn with its first member
                    continue
                if attempt.queue:
                    # Kueue unsuspends a suspended Job whose Workload is still admitted, so suspending it
                    # would fight Kueue. Deleting the Job withdraws its Workload and frees the quota; on
                    # resume the plan creates it again (same name) and it queues; trainers resume from
                    # their saved state.
                    self.kube.delete_job(namespace, attempt.name)
                    outcome.withdrawn.append(attempt.name)
                else:
                    self.kube.set_job_suspended(namespace, attempt.name, True)
                    outcome.suspended.append(attempt.name)
        elif isinstance(action, Resume):
            # Only Jobs the operator suspended: a Queued Job (Kueue's) is never unsuspended here.
            for attempt in attempts.get(action.task, []):
                if attempt.state == "Suspended" and not attempt.queue:
                    self.kube.set_job_suspended(namespace, attempt.name, False)
                    outcome.resumed.append(attempt.name)
        elif isinstance(action, Succeed):
            pass  # the status records it
        # Fail: the status records it; other tasks' Jobs keep running (raising maxRetries resumes the run).

    def _create_job(self, namespace: str, manifest: dict[str, Any], kind: str, attempt: int) -> bool:
        """Create a Job of a task of `kind` (False: it exists already). The Job, as the API server stored it,
        goes into the Job index: its ADDED event then brings nothing new and queues no pass of its own (the
        pass that created it has accounted for it; nor does it move the run's version in the index). A multi-node Job's Service is created right after it and
        owned by it (by uid); _ensure_services covers a stop in between."""
        run = (manifest["metadata"].get("labels") or {}).get(LABEL_RUN)
        index = self.job_index if run else None
        if index is not None:
            index.creating(namespace, run, manifest["metadata"]["name"])
        created = None
        try:
            created = self.kube.create_job(namespace, manifest)
            if created is not None and index is not None:
                index.event(namespace, run, created, deleted=False, accounted=True)
        finally:
            if index is not None:
                index.creating(namespace, run, manifest["metadata"]["name"], done=True, accounted=created is not None)
        if created is None:
            return False
        if needs_service(manifest):
            self.kube.create_service(namespace, service_manifest(manifest, created["metadata"]["uid"]))
            self._services.add(created["metadata"]["uid"])
        if self.metrics is not None:
            self.metrics.jobs_created.labels(kind=kind).inc()
            if attempt > 0:
                self.metrics.retries.labels(kind=kind).inc()
        return True

    def _created(self, outcome: Outcome) -> str:
        """The Jobs a pass created, each with what it runs, for its Event ("" when none)."""
        if not outcome.announced:
            return ""
        return f"created {'Job' if len(outcome.announced) == 1 else 'Jobs'} {', '.join(outcome.announced)}"

    def _start_gang(self, body: Mapping[str, Any], run: WarpRun, uid: str, iteration: int,
                    gangs: list[dict[str, Any]], outcome: Outcome) -> None:  # fmt: skip
        """Create the gang Job of an iteration's members: the next attempt after the gang Jobs that exist
        (deterministic, so a pass that did not see its own Job yet gets 409). All M indexes: a member
        already published returns at once (kwarp train skips it)."""
        if iteration in outcome.gangs:
            return
        namespace = run.metadata.namespace or "default"
        attempt = next_attempt(gangs, iteration)
        manifest = gang_manifest(run, uid, iteration, attempt, self.worker)
        job = manifest["metadata"]["name"]
        outcome.gangs[iteration] = job
        # Multi-node members: their Service gives the rendezvous names (<job>-<index>.<job>).
        if not self._create_job(namespace, manifest, "train", attempt):
            return
        outcome.created.append(job)
        again = f", attempt {attempt}" if attempt else ""
        outcome.announced.append(f"{job} (trainer: the {run.spec.warp.policies} members of iteration {iteration} "
                                 f"as one gang{again})")  # fmt: skip

    def _ensure_services(self, namespace: str, jobs: list[dict[str, Any]]) -> None:
        """Each unfinished multi-node Job has its Service: create it (a no-op when it exists) once per Job
        per operator lifetime. The pods retry the rendezvous until its name resolves."""
        for job in jobs:
            job_uid = job["metadata"]["uid"]
            if not needs_service(job) or job_uid in self._services or job_finished(job):
                continue
            self.kube.create_service(namespace, service_manifest(job, job_uid))
            self._services.add(job_uid)

    def _failure_messages(self, namespace: str, views: list[JobView]) -> dict[str, str]:
        """Failure text of each failed Job, with what its pod's container said (asked once per Job)."""
        out = {}
        for v in views:
            if v.state != "Failed" or v.pod:  # a gang member's failed pod carries its own words
                continue
            with self._lock:
                known = v.uid in self._pod_details
                detail = self._pod_details.get(v.uid)
            if not known:
                detail = next((d for p in self.kube.job_pods(namespace, v.name) if (d := pod_failure(p))), None)
                with self._lock:
                    self._pod_details[v.uid] = detail
            out[v.name] = failure_message(v, detail)
        return out

    def _count_failures(self, views: list[JobView], done: frozenset[Task]) -> None:
        if self.metrics is None:
            return
        for v in views:
            if v.state == "Failed" or (v.state == "Succeeded" and v.task not in done):
                with self._lock:
                    if v.uid in self._counted_failures:
                        continue
                    self._counted_failures.add(v.uid)
                self.metrics.job_failures.labels(kind=v.task.kind, reason=failure_reason_code(v, done)).inc()

    def _report(self, body: Mapping[str, Any], previous: WarpRunStatus, status: WarpRunStatus,
                outcome: Outcome) -> Outcome:  # fmt: skip
        """Patch the status if it changed; post one Event for a new phase and the Jobs the pass created (an
        iteration's members are created together, and every pass that creates Jobs but the first of a run's
        tasks also changes its phase), and one for each new problem. Each Event is a POST the API server
        serves, and kopf posts them one at a time from the event loop that delivers the Job events."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        created = self._created(outcome)
        patch = status_patch(previous, status)  # the stored status, as the pass's start read it
        if patch is not None:
            try:
                stored = self.kube.patch_run_status(namespace, name, patch)
            except Exception:
                if created:  # the Jobs exist: no later pass creates (or announces) them again
                    self.events(body, "Normal", "JobCreated", created[:1000])
                raise
            if self.runs is not None:
                if stored is None:
                    # Gone (404), though the cache still had it: kopf reports no deletion that happened while
                    # its watch was reconnecting. Forget it, so that no further pass acts for it.
                    self.runs.deleted(body)
                else:
                    self.runs.put(stored)  # the next pass compares with what it wrote, before the watch says so
            if stored is not None and own_write(body, stored):
                outcome.written = (stored.get("metadata") or {}).get("resourceVersion")
            outcome.status_patched = True
        outcome.phase = status.phase
        if status.phase is not None and status.phase != previous.phase:
            failed = status.phase == "Failed"
            why = C.find(status.conditions, (C.FAILED if C.is_true(status.conditions, C.FAILED) else C.INVALID)
                         if failed else C.READY)  # fmt: skip
            message = f"{previous.phase or 'new'} -> {status.phase}" + (f": {why.message}" if why else "")
            message += f"; {created}" if created else ""
            self.events(body, "Warning" if failed else "Normal", status.phase, message[:1000])
        elif created:
            self.events(body, "Normal", "JobCreated", created[:1000])
        for type_, reason in PROBLEM_EVENTS:
            cond = C.find(status.conditions, type_)
            if cond is not None and cond.status == C.TRUE and not C.is_true(previous.conditions, type_):
                self.events(body, "Warning", reason, cond.message[:1000])
        if self.metrics is not None and status.phase is not None:
            with self._lock:
                gone = meta.get("uid") in self._gone
            if gone:
                # Deleted while this pass ran: what it exported would outlive the run (forget ran before it).
                self.admission.forget(namespace, name)
                self.metrics.forget_run(namespace, name)
            else:
                self.metrics.observe_run(namespace, name, status.phase, status.iteration)
                observe_progress(self.metrics, namespace, name, status)
                if status.export is not None:  # the exported policy's point, for the dashboard
                    self.metrics.run.set_export(namespace, name, status.export.eta, status.export.reward,
                                                status.export.kl)  # fmt: skip
        return outcome


def job_finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])  # fmt: skip


def _queued(attempts: Mapping[Task, list[JobView]], task: Task) -> bool:
    return any(a.state == "Queued" for a in attempts.get(task, []))


# Conditions that, when they start to hold, are also posted as Warning Events (reason = the Event's).
PROBLEM_EVENTS = (
    (C.SPEC_CHANGE_REFUSED, "SpecChangeRefused"),
    (C.INVALID, "InvalidSpec"),
    (C.STORE_UNAVAILABLE, "StoreUnavailable"),
    (C.PODS_STUCK, "PodsStuck"),
    (C.STORE_CONFLICT, "StoreConflict"),
    (C.STORAGE_NOT_ALLOWED, "StorageNotAllowed"),
)
