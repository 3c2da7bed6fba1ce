"""The embedded runner's decisions and guards, without training anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from kwarp.core.errors import UserError
from kwarp.core.plan import Observed, Task, all_tasks
from kwarp.core.spec import parse
from kwarp.run.children import PROGRESS_PREFIX, close_orphaned_attempts, failure_reason
from kwarp.run.runner import LocalExecutor, default_parallel, disk_needed, threads_per_task, with_store
from kwarp.store import FileStore, layout

from .prom import sample, scrape
from .test_spec import doc


def _run(**patches: object):
    return parse(doc(**{"spec.storage": {"url": "/tmp/unused"}, **patches}))


@pytest.mark.parametrize(("members", "cores", "expected"), [(2, 2, 2), (2, 16, 3), (4, 2, 2), (1, 1, 1), (8, 64, 9)])
def test_default_parallel(members: int, cores: int, expected: int) -> None:
    assert default_parallel(members, cores) == expected


def test_threads_split_the_cores() -> None:
    assert threads_per_task(2, 2) == 1 and threads_per_task(1, 8) == 8 and threads_per_task(3, 8) == 2


def test_failure_reason_prefers_the_tasks_own_error() -> None:
    tail = ["step 3", "kwarp train: error: spec.data.train: /x.jsonl does not exist", "bye"]
    assert failure_reason(tail, 2).startswith("kwarp train: error: spec.data.train")
    assert "signal 9" in failure_reason(["loading"], -9)
    assert failure_reason([], 1) == "exit code 1; last output: no output"


def test_disk_needed_grows_with_members_and_iterations() -> None:
    assert disk_needed(2, 1, 100) == 100 * (2 * 6 + 2)
    assert disk_needed(4, 3, 100) > disk_needed(2, 3, 100) > disk_needed(2, 1, 100)


def test_with_store_overrides_the_url(tmp_path: Path) -> None:
    run = parse(doc())  # an s3:// store with endpoint and secret
    local = with_store(run, str(tmp_path))
    assert local.spec.storage.url == str(tmp_path) and local.spec.storage.secret_name is None
    assert with_store(run, None) is run


def test_a_store_belongs_to_one_spec(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    console = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    first = LocalExecutor(_run(), store, console=console, live=False, log_dir=tmp_path / "logs")
    first.claim()
    # The run's own folder: local/<name>/<uid>, the ownership record written first.
    folder = first.key
    namespace, name, uid = folder.split("/")
    assert (namespace, name) == ("local", "gemma-warp") and first.run.metadata.uid == uid
    assert store.get_json(f"{folder}/OWNER.json")["executor"] == "local"
    assert store.get_json(f"{folder}/warprun.json")["spec"]["warp"]["beta"] == 0.1
    with pytest.raises(UserError, match="another `kwarp run`"):
        LocalExecutor(_run(), store, console=console, live=False, log_dir=tmp_path / "logs").claim()
    first._lock_file.close()  # type: ignore[union-attr]
    with pytest.raises(UserError, match="spec.warp"):
        LocalExecutor(_run(**{"spec.warp.beta": 0.5}), store, console=console, live=False, log_dir=tmp_path / "l2")
    # Safe changes (retries, suspension) keep the run: the same folder is continued.
    again = LocalExecutor(
        _run(**{"spec.failurePolicy": {"maxRetries": 9}}), store, console=console, live=False, log_dir=tmp_path / "l3"
    )
    again.claim()
    assert again.key == folder
    # Another namespace is another run.
    other = LocalExecutor(_run(**{"metadata.namespace": "team-b"}), store, console=console, live=False, log_dir=tmp_path / "l4")
    assert other.key.startswith("team-b/gemma-warp/") and other.key.split("/")[2] != uid


def test_a_document_with_a_uid_keeps_it_and_a_foreign_record_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    console = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    run = _run(**{"metadata.uid": "u-1"})
    store.put_json("local/gemma-warp/u-1/OWNER.json", {"namespace": "local", "name": "gemma-warp", "uid": "u-1",
                                                      "specDigest": "sha256:other", "executor": "local"})  # fmt: skip
    executor = LocalExecutor(run, store, console=console, live=False, log_dir=tmp_path / "logs")
    assert executor.key == "local/gemma-warp/u-1"
    with pytest.raises(UserError, match="another spec"):
        executor.claim()
    assert not store.exists("local/gemma-warp/u-1/warprun.json")


def test_the_runner_exports_the_runs_progress_and_no_eta_it_cannot_measure(tmp_path: Path) -> None:
    """`kwarp run --metrics-port`: the run's progress ratio and estimated end, as the operator exports them."""
    console = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    executor = LocalExecutor(_run(), FileStore(tmp_path), console=console, live=False, log_dir=tmp_path / "logs")
    executor.serve_metrics(0)
    try:
        w = executor.spec.warp
        run = {"namespace": "local", "run": executor.name}
        total = sum(w.steps_for(i) * w.policies for i in range(w.iterations))
        first = frozenset([Task.prepare(), *(Task.train(0, m) for m in range(w.policies))])
        executor.export_metrics(Observed(done=first))
        samples = scrape(executor.metrics_server.url)
        assert sample(samples, "kwarp_run_progress_ratio", **run) == w.steps_for(0) * w.policies / total
        # No member reports a step time yet: no estimate rather than a guess.
        assert sample(samples, "kwarp_run_estimated_completion_timestamp_seconds", **run) is None

        executor.timeline = [{"task": "i0-eval", "start": 1000.0, "end": 1250.0, "status": "succeeded"}]
        executor.export_metrics(Observed(done=frozenset(all_tasks(executor.spec))))
        samples = scrape(executor.metrics_server.url)
        assert sample(samples, "kwarp_run_progress_ratio", **run) == 1.0
        assert sample(samples, "kwarp_run_estimated_completion_timestamp_seconds", **run) == 1250.0  # when it ended
    finally:
        executor.metrics_server.close()


def test_the_runner_exports_the_exported_policys_measured_point(tmp_path: Path) -> None:
    """`kwarp run --metrics-port` with spec.export: once the export task is done, its export.json's η and
    measured reward and KL, as the operator exports them from status.export."""
    console = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    store = FileStore(tmp_path)
    executor = LocalExecutor(_run(**{"spec.export": {"klBudget": 2.0}}), store, console=console, live=False,
                             log_dir=tmp_path / "logs")  # fmt: skip
    executor.serve_metrics(0)
    try:
        run = {"namespace": "local", "run": executor.name}
        tasks = all_tasks(executor.spec)
        assert tasks[-1] == Task.export()
        executor.export_metrics(Observed(done=frozenset(tasks[:-1])))  # evaluated, not exported yet
        assert sample(scrape(executor.metrics_server.url), "kwarp_run_export_eta", **run) is None
        store.put_json(layout.export_json(executor.key), {
            "eta": 0.625, "location": f"{store.url}/{executor.key}/export",
            "measured": {"reward": 0.41, "reward_stderr": 0.02, "kl": 1.93, "kl_stderr": 0.1, "gold": None}})  # fmt: skip
        executor.export_metrics(Observed(done=frozenset(tasks)))
        samples = scrape(executor.metrics_server.url)
        assert (sample(samples, "kwarp_run_export_eta", **run), sample(samples, "kwarp_run_export_reward", **run),
                sample(samples, "kwarp_run_export_kl", **run)) == (0.625, 0.41, 1.93)  # fmt: skip
    finally:
        executor.metrics_server.close()


def test_attempts_left_running_by_a_killed_runner_are_closed_as_interrupted(tmp_path: Path) -> None:
    """A SIGKILLed runner leaves "running" entries; the next runner (holding the lock) closes them at the
    time their log was last written, and leaves finished attempts untouched."""
    import os

    (tmp_path / "i1-m0.log").write_text("step 3\n")
    os.utime(tmp_path / "i1-m0.log", (130.0, 130.0))
    timeline = [
        {"task": "i0-m0", "attempt": 1, "start": 10.0, "end": 50.0, "status": "succeeded"},
        {"task": "i1-m0", "attempt": 1, "start": 100.0, "end": None, "status": "running"},
        {"task": "i1-m1", "attempt": 1, "start": 140.0, "end": None, "status": "running"},  # no log written
    ]
    assert close_orphaned_attempts(timeline, tmp_path) == 2
    assert timeline[0] == {"task": "i0-m0", "attempt": 1, "start": 10.0, "end": 50.0, "status": "succeeded"}
    assert (timeline[1]["status"], timeline[1]["end"]) == ("interrupted", 130.0)
    assert (timeline[2]["status"], timeline[2]["end"]) == ("interrupted", 140.0)
    assert close_orphaned_attempts(timeline, tmp_path) == 0


def test_the_runner_reads_the_progress_lines_the_trainer_writes() -> None:
    """The runner (no torch) keeps its own copy of the trainer's progress prefix: they must agree."""
    from kwarp.trainer.train import PROGRESS_PREFIX as TRAINER_PREFIX

    assert PROGRESS_PREFIX == TRAINER_PREFIX
