"""`kwarp run FILE`: the embedded executor. Carries out the plan with local processes.

The loop is the operator's, with processes instead of Jobs:

    observe (store: what is complete; processes: what runs, what failed)
      -> plan(spec, observed)                       (kwarp/core/plan.py, shared with the operator)
      -> act: start `python -m kwarp <task>` processes, up to --parallel at once

Interrupted (Ctrl-C, a killed runner, a reboot), the same command continues from what is complete:
complete tasks are never redone, since the plan reads completion from the store, and a trainer
resumes from its last saved state. Children die with the runner (PR_SET_PDEATHSIG), and a lock
stops two runners from working on one run at once, so no work is ever done twice concurrently.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kwarp.core.errors import UserError
from kwarp.core.eta import StepLog, run_progress
from kwarp.core.observe import completed_tasks
from kwarp.core.owners import claim
from kwarp.core.ownership import Owner, spec_digest, store_key
from kwarp.core.plan import Fail, Observed, Start, Succeed, Task, TaskJobs, plan, progress
from kwarp.core.spec import WarpRun, load
from kwarp.run.children import Proc, close_orphaned_attempts, failure_reason, pump_output, set_pdeathsig
from kwarp.run.held import (
    DEFAULT_WAIT_SECONDS,
    HELD_EXIT_CODE,
    HeldTasks,
    give_up_message,
    read_holder,
    waiting_message,
)
from kwarp.run.identity import identify
from kwarp.store import FileStore, Store, layout, open_store
from kwarp.store.fencing import FENCED_EXIT_CODE

_POLL_SECONDS = 0.5
METRICS_LINGER_SECONDS = 5.0


def default_parallel(members: int, cores: int | None = None) -> int:
    """Tasks run at once: one per core, at least one, at most M + 1 (an evaluation beside M trainers)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(members + 1, cores))


def threads_per_task(parallel: int, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, parallel))


def estimate_checkpoint_bytes(store: Store, run: str) -> int | None:
    manifest = store.read_manifest(layout.base(run))
    return manifest.total_bytes if manifest else None


def disk_needed(spec_members: int, iterations_left: int, base_bytes: int) -> int:
    """Bytes a file store needs for the rest of a run: per iteration M finals, M EMAs, M states
    (policy + EMA + 2 Adam moments ≈ 4 copies), the SLERP and the next init."""
    per_iteration = base_bytes * (spec_members * (1 + 1 + 4) + 2)
    return per_iteration * iterations_left


class LocalExecutor:
    def __init__(
        self,
        run: WarpRun,
        store: Store,
        *,
        parallel: int | None = None,
        log_dir: Path | None = None,
        console: Console | None = None,
        live: bool = True,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
        threads: int | None = None,
        wait_for_lease: float = DEFAULT_WAIT_SECONDS,
    ):
        # The run's identity (namespace, uid) and so its own folder in the store: found again from the
        # store's ownership records when this document ran before (kwarp.run.identity).
        self.run = identify(run, store)
        self.spec = run.spec
        self.name = run.name
        self.key = store_key(self.run)
        self.store = store
        self.parallel = parallel or default_parallel(self.spec.warp.policies)
        # Torch threads per task: the cores split between the tasks that run at once, unless the
        # caller shares the machine with other work (kwarp reproduce runs several runs side by side).
        self.threads = threads or threads_per_task(self.parallel)
        self.console = console or Console()
        self.live = live
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.log_dir = log_dir or _default_log_dir(store, self.key)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[Task, Proc] = {}
        self.jobs: dict[Task, TaskJobs] = {}
        # Tasks whose attempt here was fenced out: a newer attempt, not this runner's, holds the task's lease
        # (another `kwarp run` of this run). They count as running until the store shows them complete, or
        # until their holder shows no sign of life for `wait_for_lease` seconds (kwarp.run.held).
        self.elsewhere = HeldTasks(bound=wait_for_lease)
        self.timeline: list[dict[str, Any]] = list((store.get_json(layout.runner_json(self.key)) or {}).get("tasks", []))
        self.durations: dict[str, list[float]] = {}
        self.started = time.time()
        self.started_this_session: set[Task] = set()
        self._lock_file: TextIO | None = None
        self.metrics: Any = None
        self._exported: set[Task] = set()

    # ------------------------------------------------------------------ metrics

    def serve_metrics(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve the run's metrics (the components' catalogue) so the Grafana dashboard works locally too.

        Children need no port or gateway: the runner feeds one registry from their progress lines
        and from the merge/evaluation files they leave in the store.
        """
        from kwarp.observability import telemetry

        self.metrics = telemetry.EmbeddedMetrics(self.run.metadata.namespace or "local", self.name)
        self.metrics_server = telemetry.serve(self.metrics.registry, port, host=addr)
        self.console.print(f"metrics on http://{addr}:{port}/metrics")

    def export_metrics(self, observed: Observed) -> None:
        if self.metrics is None:
            return
        prog = progress(self.spec, observed)
        self.metrics.set_phase(prog.phase, prog.iteration)
        # Steps as the progress lines report them; the ETA is the display's (merges and evaluations included).
        logs = {(t.iteration, t.member): StepLog(step=int(step))
                for t, p in self.procs.items()
                if t.kind == "train" and isinstance(step := p.progress.get("step"), int | float)}  # fmt: skip
        steps = run_progress(self.spec, observed.done, logs)
        if prog.phase == "Succeeded":  # the end is known: when the last task ended
            end = max((e["end"] for e in self.timeline if e.get("end")), default=None)
        else:
            eta = self.eta_seconds(observed) if prog.phase != "Failed" else None
            end = None if eta is None else time.time() + eta
        self.metrics.set_progress(steps.steps_done, steps.steps_total, end)
        for task in observed.done - self._exported:
            if task.kind == "merge":
                self.metrics.record_merge(task.iteration, self.store.get_json(layout.merge_report(self.key, task.iteration)) or {})
            elif task.kind == "eval":
                self.metrics.record_eval(task.iteration, self.store.get_json(layout.eval_json(self.key, task.iteration)) or {})
            elif task.kind == "export":
                self.metrics.record_export(self.store.get_json(layout.export_json(self.key)) or {})
        self._exported = set(observed.done)

    # ------------------------------------------------------------------ checks before work

    def claim(self) -> None:
        """Hold a lock for this run (one runner at a time) and claim its folder in the store: the
        ownership record first (refused if it is another run's), then the document it runs."""
        lock_path = self.log_dir / "runner.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(lock_path, "w")  # noqa: SIM115 - held for the runner's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another `kwarp run` is working on run '{self.name}' (lock {lock_path}); wait for it or stop it"
            ) from None
        meta = self.run.metadata
        me = Owner(namespace=meta.namespace or "local", name=self.name, uid=meta.uid or "", spec_digest=spec_digest(self.spec),
                   executor="local", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
        verdict = claim(self.store, me, f"{self.store.url.rstrip('/')}/{self.key}")
        if not verdict.allowed:
            raise UserError(verdict.message)
        self.store.put_json(layout.spec_json(self.key), self.run.to_document())
        if close_orphaned_attempts(self.timeline, self.log_dir):
            self._save_timeline()

    def check_disk(self) -> None:
        if not isinstance(self.store, FileStore):
            return
        base = estimate_checkpoint_bytes(self.store, self.key)
        if base is None:
            return
        done = completed_tasks(self.store, self.spec, self.key)
        left = sum(1 for i in range(self.spec.warp.iterations) if Task.merge(i) not in done)
        need = disk_needed(self.spec.warp.policies, left, base)
        root = self.store.root
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if free < need:
            raise UserError(
                f"not enough disk for the rest of run '{self.name}': about {need / 1e9:.2f} GB needed, "
                f"{free / 1e9:.2f} GB free under {root}; free some space or pass --store elsewhere"
            )

    # ------------------------------------------------------------------ the loop

    def execute(self) -> int:
        self.claim()
        if self.spec.suspend:
            self.console.print(f"[yellow]run '{self.name}' has spec.suspend: true; nothing to do[/]")
            return 0
        self.console.print(
            f"[bold]kwarp run[/] {self.name}: I={self.spec.warp.iterations} M={self.spec.warp.policies} "
            f"T={self.spec.warp.steps} store={self.store.url} parallel={self.parallel} "
            f"(logs in {self.log_dir})"
        )
        try:
            if self.live and self.console.is_terminal:
                with Live(self.render(None), console=self.console, refresh_per_second=4, transient=False) as live:
                    return self._loop(lambda obs: live.update(self.render(obs)))
            return self._loop(self._log_transitions)
        except KeyboardInterrupt:
            self.stop_all()
            self.console.print(
                "[yellow]interrupted: running tasks stopped; run the same command again to continue[/]"
            )
            return 130
        finally:
            self.stop_all()
            self._save_timeline()

    def _loop(self, show: Any) -> int:
        self.check_disk()
        while True:
            self.reap()
            observed = Observed(done=completed_tasks(self.store, self.spec, self.key), jobs=self._jobs_view())
            if (held := self.watch_held(observed)) is not None:
                show(observed)
                return held
            actions = plan(self.spec, observed)
            show(observed)
            for action in actions:
                if isinstance(action, Fail):
                    self.stop_all()
                    show(observed)
                    self.console.print(f"[red bold]run '{self.name}' failed:[/] {action.reason}")
                    log = self.log_dir / f"{action.task.id}.log"
                    self.console.print(f"see {log}; fix the cause and run the same command again to continue")
                    return 1
                if isinstance(action, Succeed):
                    show(observed)
                    self.export_metrics(observed)
                    if self.metrics is not None:
                        # Let Prometheus scrape the last evaluation before the endpoint goes away.
                        time.sleep(METRICS_LINGER_SECONDS)
                    return 0
                if isinstance(action, Start) and action.task not in self.procs and len(self.procs) < self.parallel:
                    self.start(action.task, action.attempt)
                # Suspend/Resume concern Jobs in a cluster; locally a suspended run is not started at all.
            self.export_metrics(observed)
            time.sleep(_POLL_SECONDS)

    def watch_held(self, observed: Observed) -> int | None:
        """Look at the holders of the tasks held elsewhere; HELD_EXIT_CODE once one showed no sign of life for
        the bound (this runner's own tasks stopped, the holder's lease left alone), else None: wait on."""
        self.elsewhere.forget(observed.done)
        now = time.time()
        if not self.elsewhere.due(now):
            return None
        for task in self.elsewhere:
            self.elsewhere.look(task, read_holder(self.store, self.key, task), now)
        expired = self.elsewhere.expired(now)
        if not expired:
            return None
        self.stop_all()
        for task, holder, quiet in expired:
            self.console.print(f"[red bold]kwarp run: stopped waiting:[/] "
                               f"{give_up_message(task, holder, quiet, self.elsewhere.bound, now)}", soft_wrap=True)  # fmt: skip
        return HELD_EXIT_CODE

    def _jobs_view(self) -> dict[Task, TaskJobs]:
        view = dict(self.jobs)
        for task in self.procs.keys() | self.elsewhere:
            prev = view.get(task, TaskJobs())
            view[task] = TaskJobs(active=True, failures=prev.failures, last_failure=prev.last_failure)
        return view

    def start(self, task: Task, attempt: int) -> None:
        env = {
            **os.environ,
            **self.extra_env,
            "KWARP_SPEC": json.dumps(self.run.to_document()),
            "KWARP_NAMESPACE": self.run.metadata.namespace or "local",
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = self.log_dir / f"{task.id}.log"
        log = open(log_path, "a")  # noqa: SIM115 - closed by the pump thread
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt}: kwarp {' '.join(task.argv())}\n")
        log.flush()
        popen = subprocess.Popen(
            [self.python, "-P", "-m", "kwarp", *task.argv()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the runner only; it stops children in order
            preexec_fn=set_pdeathsig if sys.platform.startswith("linux") else None,
        )
        proc = Proc(task=task, attempt=attempt, popen=popen, log_path=log_path, started=time.time())
        proc.reader = threading.Thread(target=pump_output, args=(proc, log, self.metrics), daemon=True)
        proc.reader.start()
        self.procs[task] = proc
        self.started_this_session.add(task)
        self.timeline.append({"task": task.id, "attempt": attempt, "start": proc.started, "end": None, "status": "running"})
        self._save_timeline()  # kept current: a killed runner leaves an accurate record

    def reap(self) -> None:
        for task, proc in list(self.procs.items()):
            rc = proc.popen.poll()
            if rc is None:
                continue
            if proc.reader is not None:
                proc.reader.join(timeout=5)
            del self.procs[task]
            end = time.time()
            done = rc == 0 and task in completed_tasks(self.store, self.spec, self.key)
            entry = next(
                (e for e in reversed(self.timeline) if e["task"] == task.id and e["end"] is None), None
            )
            if entry is not None:
                entry.update(end=end, status="succeeded" if done else "failed", exit_code=rc)
            if rc == FENCED_EXIT_CODE and not done:
                # Not this task's failure: a newer attempt of it runs elsewhere and publishes its outputs. It
                # is not counted against maxRetries, and not started again here (that would fence the newer
                # one out in turn): the runner waits for it to finish (docs/internals.md, Task leases).
                if entry is not None:
                    entry["status"] = "fenced"
                holder = read_holder(self.store, self.key, task)
                self.elsewhere.add(task, holder, end)
                self.console.print(f"[cyan]  fenced {task.id} (attempt {proc.attempt}):[/] "
                                   f"{waiting_message(task, holder, self.elsewhere.bound, end)}", soft_wrap=True)  # fmt: skip
                self._save_timeline()
                continue
            if done:
                self._save_timeline()
                self.durations.setdefault(task.kind, []).append(end - proc.started)
                if not self.live or not self.console.is_terminal:
                    self.console.print(f"  done   {task.id} in {end - proc.started:.1f}s")
                continue
            reason = (
                failure_reason(list(proc.tail), rc)
                if rc != 0
                else "exited 0 but its outputs are not complete in the store"
            )
            prev = self.jobs.get(task, TaskJobs())
            self.jobs[task] = TaskJobs(failures=prev.failures + 1, last_failure=reason)
            self.console.print(f"[red]  failed {task.id} (attempt {proc.attempt}):[/] {reason}")
            self._save_timeline()

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace
        for proc in self.procs.values():
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait()
        for proc in self.procs.values():
            entry = next((e for e in reversed(self.timeline) if e["task"] == proc.task.id and e["end"] is None), None)
            if entry is not None:
                entry.update(end=time.time(), status="interrupted")
        self.procs.clear()

    def _save_timeline(self) -> None:
        try:
            self.store.put_json(layout.runner_json(self.key), {"tasks": self.timeline})
        except Exception:  # the timeline is informative; never let it mask the real outcome
            pass

    # ------------------------------------------------------------------ display

    def eta_seconds(self, observed: Observed) -> float | None:
        """Remaining time: member-steps left at the measured seconds per step, plus merges/evaluations."""
        sec_per_step = [p.progress["step_seconds"] for p in self.procs.values() if p.progress.get("step_seconds")]
        if not sec_per_step:
            return None
        per_step = sum(sec_per_step) / len(sec_per_step)
        w = self.spec.warp
        steps_left = 0
        for i in range(w.iterations):
            for m in range(w.policies):
                t = Task.train(i, m)
                if t in observed.done:
                    continue
                proc = self.procs.get(t)
                step = proc.progress.get("step", 0) if proc else 0
                steps_left += max(0, w.steps_for(i) - step)
        lanes = max(1, min(self.parallel, w.policies))
        others = sum(
            sum(self.durations.get(k, [30.0])) / max(1, len(self.durations.get(k, [1])))
            for i in range(w.iterations)
            for k, t in (("merge", Task.merge(i)), ("eval", Task.eval(i)))
            if t not in observed.done
        )
        return steps_left * per_step / lanes + others

    def render(self, observed: Observed | None) -> Group:
        w = self.spec.warp
        done = observed.done if observed else frozenset()
        prog = progress(self.spec, observed) if observed else None
        elapsed = time.time() - self.started
        eta = self.eta_seconds(observed) if observed else None
        head = Text.assemble(
            ("kwarp ", "bold"),
            (self.name, "bold cyan"),
            f"  phase {prog.phase if prog else 'Starting'}",
            f"  iteration {min(prog.iteration, w.iterations - 1) + 1 if prog else 1}/{w.iterations}",
            f"  elapsed {_fmt_seconds(elapsed)}",
            f"  remaining ~{_fmt_seconds(eta)}" if eta is not None else "",
        )
        table = Table(expand=False, box=None, padding=(0, 1))
        for col in ("task", "state", "progress", "step", "reward", "KL anchor", "KL init", "s/step"):
            table.add_column(col)
        for task in self._visible_tasks(done):
            proc = self.procs.get(task)
            p = proc.progress if proc else {}
            if task in done:
                state = Text("done", "green")
            elif proc:
                state = Text(f"running{' (retry ' + str(proc.attempt) + ')' if proc.attempt else ''}", "yellow")
            elif task in self.elsewhere:
                state = Text("running elsewhere", "cyan")
            elif self.jobs.get(task, TaskJobs()).failures:
                state = Text("failed", "red")
            else:
                state = Text("waiting", "dim")
            steps = w.steps_for(task.iteration) if task.kind == "train" else None
            step = p.get("step", steps if task in done else 0) if task.kind == "train" else None
            bar: Any = ProgressBar(total=steps, completed=step or 0, width=24) if steps else Text("")
            table.add_row(
                task.id,
                state,
                bar,
                f"{step}/{steps}" if steps else "",
                _fmt(p.get("reward")),
                _fmt(p.get("kl_anchor")),
                _fmt(p.get("kl_init")),
                _fmt(p.get("step_seconds"), ".2f"),
            )
        return Group(head, table)

    def _visible_tasks(self, done: frozenset[Task]) -> list[Task]:
        """The current iteration's tasks plus whatever runs (e.g. the previous evaluation)."""
        from kwarp.core.plan import all_tasks

        tasks = all_tasks(self.spec)
        current = next((t.iteration for t in tasks if t.kind == "merge" and t not in done), self.spec.warp.iterations - 1)
        return [
            t
            for t in tasks
            if t in self.procs or (t.iteration == current) or (t.kind == "eval" and t.iteration == current - 1 and t not in done)
        ]

    def _log_transitions(self, observed: Observed) -> None:
        """Plain output when stdout is not a terminal: one line per task start and a step line now and then."""
        now = time.time()
        if now - getattr(self, "_last_line", 0.0) < 10:
            return
        self._last_line = now
        running = ", ".join(
            f"{t.id}" + (f" step {p.progress.get('step')}/{p.progress.get('steps')} reward {_fmt(p.progress.get('reward'))}" if p.progress else "")
            for t, p in self.procs.items()
        )
        eta = self.eta_seconds(observed)
        self.console.print(
            f"[{_fmt_seconds(now - self.started)}] done {len(observed.done)} tasks; running: {running or '-'}"
            + (f"; remaining ~{_fmt_seconds(eta)}" if eta is not None else "")
        )


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _default_log_dir(store: Store, run: str) -> Path:
    if isinstance(store, FileStore):
        return store.root / run / "logs"
    from kwarp.core.locations import cache_root

    return cache_root() / "logs" / run


def report_dir(store: Store, run: str) -> Path:
    if isinstance(store, FileStore):
        return store.root / run / "report"
    from kwarp.core.locations import cache_root

    return cache_root() / "reports" / run


def write_report(store: Store, run: WarpRun, console: Console) -> Path | None:
    try:
        from kwarp.run.report import write_report as _write
    except ImportError:  # pragma: no cover - the report module ships with kwarp
        return None
    key = store_key(run)  # run as the executor identified it (namespace and uid set)
    out = _write(store, key, run.spec, report_dir(store, key))
    return Path(out)


# ---------------------------------------------------------------------- CLI


def with_store(run: WarpRun, url: str | None) -> WarpRun:
    if not url:
        return run
    if "://" not in url:
        url = str(Path(url).expanduser().resolve())
    storage = run.spec.storage.model_copy(update={"url": url})
    if not url.startswith("s3://"):
        storage = storage.model_copy(update={"endpoint": None, "secret_name": None})
    return run.model_copy(update={"spec": run.spec.model_copy(update={"storage": storage})})


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="WarpRun YAML document")
    parser.add_argument("--store", help="checkpoint root (path, file:// or s3://); default: spec.storage.url")
    parser.add_argument("--parallel", type=int, help="tasks run at once (default: from the CPU cores and M)")
    parser.add_argument("--threads", type=int, help="torch threads per task (default: the cores divided by --parallel)")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end")
    parser.add_argument("--plain", action="store_true", help="plain log lines instead of the live display")
    parser.add_argument("--metrics-port", type=int, help="serve the run's metrics for Prometheus on this port")
    parser.add_argument("--wait-for-lease", type=float, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
                        help="when another attempt (another `kwarp run` of this run) holds a task, wait at most this "
                             f"long without a sign of its progress, then stop with exit {HELD_EXIT_CODE} (default: "
                             f"{DEFAULT_WAIT_SECONDS:g}; 0: stop at once)")  # fmt: skip
    parser.set_defaults(func=_main)


def say_export(record: Any, console: Console) -> None:
    """One line: where the exported policy is and what it measured."""
    if not isinstance(record, dict) or "measured" not in record:
        return
    m = record["measured"]
    console.print(
        f"[green bold]exported policy:[/] {record.get('location')} (η = {record.get('eta', 0):.4g}, "
        f"reward {m.get('reward', float('nan')):.4f} ± {m.get('reward_stderr', float('nan')):.4f}, "
        f"KL {m.get('kl', float('nan')):.4f} ± {m.get('kl_stderr', float('nan')):.4f}; model card README.md)",
        soft_wrap=True,  # one line, whatever the width: the location is copied from it
    )


def _main(args: argparse.Namespace) -> int:
    run = with_store(load(args.file), args.store)
    console = Console()
    store = open_store(run.spec.storage.url, run.spec.storage)
    if args.parallel is not None and args.parallel < 1:
        raise UserError("--parallel must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.wait_for_lease < 0:
        raise UserError("--wait-for-lease must be 0 or more seconds")
    executor = LocalExecutor(run, store, parallel=args.parallel, console=console, live=not args.plain,
                             threads=args.threads, wait_for_lease=args.wait_for_lease)
    if args.metrics_port:
        executor.serve_metrics(args.metrics_port)
    rc = executor.execute()
    if rc == 0 and run.spec.export is not None:
        say_export(store.get_json(layout.export_json(executor.key)), console)
    if rc == 0 and not args.no_report:
        path = write_report(store, executor.run, console)
        if path is not None:
            console.print(f"[green bold]run '{run.name}' succeeded.[/] report: {path}")
    return rc
