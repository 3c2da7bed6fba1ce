"""Two overlapping attempts of one task: the task commands claim their lease, the older attempt is fenced out.

The overlap is made exact, not timed: the older attempt runs as a real process until it has published a
resumable state, is frozen (SIGSTOP: a pod behind a network partition, a lingering predecessor of a
retried Job), a newer attempt of the same task runs to its end, and the older one is let go again. It
must then stop at its next write with the fenced-out exit code, and what the store holds is the newer
attempt's, whole.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

from kwarp.core.observe import completed_tasks
from kwarp.core.plan import Observed, Start, Task, TaskJobs, plan
from kwarp.core.spec import parse
from kwarp.run.runner import LocalExecutor
from kwarp.store import layout, open_store
from kwarp.store.fencing import FENCED_EXIT_CODE, claim_task
from kwarp.store.versions import generation_of
from kwarp.trainer.state import STATE_JSON
from kwarp.trainer.train import PROGRESS_PREFIX
from tests.models import perturbed, tiny_gpt2
from tests.processes import freeze, send
from tests.s3server import FaultyProxy, Hold, S3Server, s3_server
from tests.test_trainer import make_run  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore")


def _train_argv(*extra: str) -> list[str]:
    return [sys.executable, "-P", "-m", "kwarp", "train", "--iteration", "0", "--member", "0", "--device", "cpu", *extra]


def _env(run_doc: dict, cwd: Path) -> dict[str, str]:
    return {**os.environ, "KWARP_SPEC": json.dumps(run_doc), "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}


@contextmanager
def held_attempt(argv: list[str], env: dict[str, str], cwd: Path, held: Hold) -> Iterator[subprocess.Popen[str]]:
    """The older attempt of a task, started as its own process while the proxy holds one of its requests. When
    the block ends, however it ends, the hold is let go and a process still running (a failed assertion) is
    killed and reaped."""
    older = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield older
    finally:
        held.release()
        if older.poll() is None:
            older.kill()
            older.wait()


def test_an_older_member_attempt_is_fenced_out_and_the_final_checkpoint_is_the_newer_ones(make_run, tmp_path: Path) -> None:  # noqa: F811
    # T = 60: the older attempt cannot finish while the test looks on; it saves every 2 steps.
    run = make_run(warp={"steps": 60}, training={"checkpointInterval": 2})
    env = _env(run.to_document(), tmp_path)
    root = tmp_path / "store"
    older = subprocess.Popen(_train_argv(), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert older.stdout is not None
        for line in older.stdout:  # step 3 printed: the state of step 2 is published (saved before step 3 runs)
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX):])["step"] >= 3:
                break
        frozen = freeze(older.pid)
        saved = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())["step"]
        assert 2 <= saved < 60

        # The newer attempt (a retried Job's pod, say) takes the lease, resumes from the older one's last
        # state and finishes the member (--steps: 4 steps past that state, to keep the test short; it saves
        # its own state 2 steps in).
        newer = subprocess.run(_train_argv("--steps", str(saved + 4)), env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert newer.returncode == 0, newer.stdout[-3000:] + newer.stderr[-3000:]
        assert f"resuming r i0 m0 at step {saved}/{saved + 4}" in newer.stdout

        send(frozen, signal.SIGCONT)  # the partition heals: the older attempt goes on where it was
        out, err = older.communicate(timeout=600)
    finally:
        if older.poll() is None:
            send([older.pid], signal.SIGCONT)
            older.kill()
            older.wait()
    assert older.returncode == FENCED_EXIT_CODE, (out[-2000:], err[-3000:])
    assert "kwarp train: fenced out:" in err
    assert "a newer attempt of task i0-m0 holds the lease (epoch 2" in err
    assert "this attempt (epoch 1," in err and "publishes nothing more" in err

    store = open_store(str(root))
    lease = json.loads((root / layout.lease("r", "i0-m0")).read_text())
    assert lease["epoch"] == 2
    for key in (layout.member_final("r", 0, 0), layout.member_ema("r", 0, 0), layout.member_state("r", 0, 0)):
        # Each pointer names a version of the newer attempt's generation (its epoch), and the version is whole.
        target = os.readlink(root / key)
        assert generation_of(Path(target).name) == 2, (key, target)
        store.verify_checkpoint(key)
    final_state = json.loads((root / layout.member_state("r", 0, 0) / STATE_JSON).read_text())
    assert final_state["step"] == saved + 2  # the newer attempt's, not a later state of the older one
    steps = [json.loads(ln)["step"] for ln in (root / layout.member_log("r", 0, 0)).read_text().splitlines()]
    assert steps == list(range(1, saved + 5))  # the newer attempt's log: no step of the older one after the takeover


# ------------------------------------------------------------------------------------------ merge, on S3

s3 = pytest.fixture(scope="module")(s3_server)


def test_an_older_merge_attempt_is_fenced_out_mid_upload_and_the_newer_ones_outputs_stay(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The older merge is partitioned from the store while it uploads slerp(0) (its request held in a proxy);
    a newer attempt merges the iteration; once the partition heals, the older one's pointer swap is refused."""
    bucket = s3.create_bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    base = tiny_gpt2(tmp_path / "sft", seed=0)
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "tiny"},
        "spec": {
            "policy": {"location": str(base)},
            "reward": {"callable": "kwarp.tasks:reward"},
            "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")},
            "warp": {"iterations": 1, "policies": 2, "steps": 1},
            "storage": {"url": f"s3://{bucket}/runs"},
        },
    }
    store = open_store(f"s3://{bucket}/runs")
    store.put_checkpoint(base, layout.base("tiny"))
    for m in range(2):
        store.put_checkpoint(perturbed(base, tmp_path / f"member-{m}", seed=m + 1), layout.member_final("tiny", 0, m))
    argv = [sys.executable, "-P", "-m", "kwarp", "merge", "--iteration", "0"]
    slerp_key, report_key = layout.slerp("tiny", 0), layout.merge_report("tiny", 0)

    with FaultyProxy(s3.port) as proxy:
        held = proxy.hold(rb"PUT /" + bucket.encode() + rb"/runs/" + slerp_key.encode() + rb"/[.]v/")
        # A read timeout longer than the test: the held request must not be retried past the hold meanwhile.
        slow_env = {**_env(doc, tmp_path), **s3.env(proxy.endpoint), "KWARP_S3_READ_TIMEOUT_S": "3600"}
        with held_attempt(argv, slow_env, tmp_path, held) as older:
            assert held.reached.wait(300), "the older merge never uploaded slerp(0)"
            newer = subprocess.run(argv, env={**_env(doc, tmp_path), **s3.env()}, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
            assert newer.returncode == 0, newer.stdout[-3000:] + newer.stderr[-3000:]
            published = store.read_manifest(slerp_key)
            report = store.get_versioned(report_key)
            held.release()
            out, err = older.communicate(timeout=600)
    assert older.returncode == FENCED_EXIT_CODE, (out[-2000:], err[-3000:])
    assert "kwarp merge: fenced out:" in err and "a newer attempt of task i0-merge holds the lease (epoch 2" in err
    assert published is not None and published.placement is not None and published.placement.generation == 2
    after = store.read_manifest(slerp_key)
    assert after is not None and after.placement == published.placement and after.digest == published.digest
    assert report is not None and store.get_versioned(report_key) == report  # merge.json written once, by the newer
    store.verify_checkpoint(slerp_key)  # whole: the older attempt's upload never became a version of it


# ------------------------------------------------------------------------------------ the embedded runner


def _wait_reaped(executor: LocalExecutor, task: Task, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while task in executor.procs:
        assert time.monotonic() < deadline, f"{task.id} still running after {timeout:.0f} s"
        executor.reap()
        time.sleep(0.1)


def test_the_runner_does_not_count_a_fenced_out_attempt_as_a_failure_and_waits_for_the_newer_one(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kwarp run`'s prepare task is partitioned from the store (S3, its upload held in a proxy) while a newer
    attempt of the same task (another `kwarp run` of this run, on another machine) claims the task's lease.
    The runner's attempt exits fenced out: no failure is counted (maxRetries 0 would fail the run), it is
    not started again, and once the newer attempt has published, the run goes on."""
    bucket = s3.create_bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "fence_rewards.py").write_text("def zero(prompts, completions):\n    return [0.0] * len(completions)\n")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a", "b c", "d", "e f g")))
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "fenced"},
        "spec": {
            "policy": {"location": str(tiny_gpt2(tmp_path / "sft", seed=0))},
            "reward": {"callable": "fence_rewards:zero"},
            "data": {"train": str(data), "eval": str(data)},
            "warp": {"iterations": 1, "policies": 2, "steps": 1},
            "training": {"batchSize": 2, "samplesPerPrompt": 2, "microBatchSize": 2},
            "failurePolicy": {"maxRetries": 0},
            "storage": {"url": f"s3://{bucket}/runs"},
        },
    }
    store = open_store(f"s3://{bucket}/runs")
    console = Console(file=io.StringIO(), width=200)
    with FaultyProxy(s3.port) as proxy:
        executor = LocalExecutor(
            parse(doc), store, console=console, live=False, log_dir=tmp_path / "logs", parallel=1,
            extra_env={**s3.env(proxy.endpoint), "KWARP_S3_READ_TIMEOUT_S": "3600", "PYTHONPATH": str(tmp_path)},
        )  # fmt: skip
        executor.claim()
        prepare = Task.prepare()
        base_key = layout.base(executor.key)
        held = proxy.hold(rb"PUT /" + bucket.encode() + rb"/runs/" + base_key.encode() + rb"/[.]v/")
        executor.start(prepare, 0)
        try:
            assert held.reached.wait(300), "the runner's prepare never uploaded the base policy"
            # The newer attempt has started (its claim is the first thing it writes) and not finished yet.
            newer = claim_task(store, executor.key, prepare.id, "another kwarp run")
            held.release()
            _wait_reaped(executor, prepare)
        finally:
            held.release()
            executor.stop_all()
    log = (tmp_path / "logs" / "prepare.log").read_text()
    assert "kwarp prepare: fenced out:" in log and f"holds the lease (epoch {newer.epoch}, holder another kwarp run" in log
    assert executor.jobs.get(prepare, TaskJobs()).failures == 0
    assert [e["status"] for e in executor.timeline if e["task"] == "prepare"] == ["fenced"]
    assert "fenced prepare (attempt 0)" in console.file.getvalue()  # type: ignore[attr-defined]

    # While the newer attempt runs, the plan neither fails the run nor starts the task here again.
    observed = Observed(done=completed_tasks(store, executor.spec, executor.key), jobs=executor._jobs_view())
    assert prepare not in observed.done and plan(executor.spec, observed) == []

    # The newer attempt publishes (here: a `kwarp prepare` of the same run, holding the lease after that claim);
    # the runner's next look finds the task complete and starts the members.
    finished = subprocess.run([sys.executable, "-P", "-m", "kwarp", "prepare"], env={**_env(executor.run.to_document(), tmp_path),
                              **s3.env()}, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    observed = Observed(done=completed_tasks(store, executor.spec, executor.key), jobs=executor._jobs_view())
    assert prepare in observed.done
    assert {a.task for a in plan(executor.spec, observed) if isinstance(a, Start)} == {Task.train(0, 0), Task.train(0, 1)}


def test_an_older_eval_attempt_is_fenced_out_and_writes_no_eval_json(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The older evaluation claimed the lease and is then partitioned (its read of the base policy held in the
    proxy) while a newer attempt claims the task; let go, it evaluates, and its eval.json is refused."""
    bucket = s3.create_bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    base = tiny_gpt2(tmp_path / "sft", seed=0)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("The film was", "I thought", "This is")))
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "tiny"},
        "spec": {
            "policy": {"location": str(base), "dtype": "float32"},
            "reward": {"callable": "kwarp.tasks.sentiment:true_score"},
            "data": {"train": str(data), "eval": str(data)},
            "warp": {"iterations": 1, "policies": 1, "steps": 1},
            "training": {"maxNewTokens": 4},
            "evaluation": {"etas": [0.0, 1.0], "prompts": 2, "batchSize": 2},
            "storage": {"url": f"s3://{bucket}/runs"},
        },
    }
    store = open_store(f"s3://{bucket}/runs")
    store.put_checkpoint(base, layout.base("tiny"))
    member = perturbed(base, tmp_path / "member-0", seed=1)
    store.put_checkpoint(member, layout.member_final("tiny", 0, 0))
    store.put_checkpoint(member, layout.slerp("tiny", 0))
    with FaultyProxy(s3.port) as proxy:
        # The first request for the base policy comes after the claim (before it: eval.json's existence, the lease).
        held = proxy.hold(rb"GET /" + bucket.encode() + rb"/runs/tiny/base/MANIFEST[.]json")
        env = {**_env(doc, tmp_path), **s3.env(proxy.endpoint), "KWARP_S3_READ_TIMEOUT_S": "3600"}
        argv = [sys.executable, "-P", "-m", "kwarp", "eval", "--iteration", "0", "--device", "cpu"]
        with held_attempt(argv, env, tmp_path, held) as older:
            assert held.reached.wait(300), "the older evaluation never read the base policy"
            lease = store.get_json(layout.lease("tiny", "i0-eval"))
            assert lease is not None and lease["epoch"] == 1, f"the older evaluation holds no lease: {lease}"
            newer = claim_task(store, "tiny", "i0-eval", "pod newer")
            held.release()
            out, err = older.communicate(timeout=600)
    assert older.returncode == FENCED_EXIT_CODE, (out[-2000:], err[-3000:])
    assert "kwarp eval: fenced out:" in err and f"(epoch {newer.epoch}, holder pod newer" in err
    assert not store.exists(layout.eval_json("tiny", 0))
