"""`kwarp run` end to end on the demo task (tiny settings): killed mid-run, run again, completes.

Checks the embedded executor's promises: a second run continues from what is complete and redoes
nothing (finished members keep their exact checkpoints; no new attempt of a finished task), no
half-written checkpoint is ever visible, the run ends by exporting its policy (spec.export), and the
report holds a front for every iteration and the exported point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kwarp.core.checkpoints import MANIFEST
from kwarp.core.observe import completed_tasks
from kwarp.core.owners import read_owners
from kwarp.core.plan import all_tasks
from kwarp.core.spec import load
from kwarp.store import FileStore, layout
from tests.processes import freeze, send, wait_gone
from tests.tinytask import tiny_document


def _kwarp(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "kwarp", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[str], poll: float = 0.2) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early ({proc.returncode}):\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(poll)
    raise AssertionError("timed out waiting for the run to reach the kill point")


def test_run_killed_and_resumed(tiny_task: Path, tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    doc_path = tmp_path / "warprun.yaml"
    doc = tiny_document(tiny_task, str(store_root), name="resume")
    doc["spec"]["export"] = {"klBudget": 1.0}  # the run ends with its deliverable
    doc_path.write_text(yaml.safe_dump(doc))
    run = load(doc_path)
    store = FileStore(store_root)
    env = {**os.environ, "KWARP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    # 1. Start, and kill the runner (SIGKILL: no clean-up) once iteration 0 is merged and an iteration-1
    #    member has saved a resumable state. The run is frozen (SIGSTOP, the runner and its children) before
    #    it is looked at again and killed: a member polled mid-training can otherwise finish before the kill
    #    (a faster machine trains the tiny member's last steps in well under a second).
    first = _kwarp("run", str(doc_path), "--plain", "--parallel", "2", "--no-report", env=env)

    def folder() -> str | None:
        """The run's own folder (local/resume/<uid>), once the runner has written its ownership record."""
        owners = read_owners(store, "local", "resume")
        return owners[0].key if owners else None

    def resumable(key: str) -> list[int]:
        """Iteration 1's members that saved a state and have not finished."""
        return [m for m in range(2) if store.has_checkpoint(layout.member_state(key, 1, m))
                and not store.has_checkpoint(layout.member_final(key, 1, m))]  # fmt: skip

    def kill_point() -> bool:
        return (key := folder()) is not None and store.has_checkpoint(layout.init(key, 1)) and bool(resumable(key))

    deadline = time.monotonic() + 600
    while True:
        _wait_for(kill_point, timeout=deadline - time.monotonic(), proc=first, poll=0.02)
        tree = freeze(first.pid)
        if kill_point():  # frozen: still true when the kill lands
            break
        send(tree, signal.SIGCONT)  # both members finished between the poll and the freeze: look again
    key = folder()
    assert key is not None and key.startswith("local/resume/")
    interrupted = resumable(key)
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_gone(tree[1:], 60)  # its children die with it (PR_SET_PDEATHSIG: SIGKILL, stopped or not)
    member_id = f"i1-m{interrupted[0]}"

    done_before = completed_tasks(store, run.spec, key)
    assert {t.id for t in done_before} >= {"prepare", "i0-m0", "i0-m1", "i0-merge"}
    assert len(done_before) < len(all_tasks(run.spec))
    # Nothing half-written is visible: every listed checkpoint folder has a verifying manifest.
    for listed in store.list(f"{key}/"):
        if listed.endswith(MANIFEST):
            store.verify_checkpoint(listed.rsplit("/", 1)[0])
    finals_before = {
        m: store.read_manifest(layout.member_final(key, 0, m)).digest for m in range(2)
    }
    slerp_before = store.read_manifest(layout.slerp(key, 0)).digest
    attempts_before = json.loads((store_root / layout.runner_json(key)).read_text())["tasks"]

    # 2. The same command again: it completes.
    second = subprocess.run(
        [sys.executable, "-P", "-m", "kwarp", "run", str(doc_path), "--plain", "--parallel", "2"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert completed_tasks(store, run.spec, key) == frozenset(all_tasks(run.spec))
    # The export ran last, into the run's store; the runner says where the policy is and what it measured.
    exported = store.get_json(layout.export_json(key))
    assert exported["location"] == f"{store.url}/{key}/export" and store.has_checkpoint(layout.export(key))
    assert exported["measured"]["kl"] <= 1.0 + exported["measured"]["kl_stderr"]
    assert f"exported policy: {exported['location']}" in " ".join(second.stdout.split())

    # 3. Nothing complete was redone.
    assert {m: store.read_manifest(layout.member_final(key, 0, m)).digest for m in range(2)} == finals_before
    assert store.read_manifest(layout.slerp(key, 0)).digest == slerp_before
    timeline = json.loads((store_root / layout.runner_json(key)).read_text())["tasks"]
    new_attempts = timeline[len(attempts_before):]
    assert not {e["task"] for e in new_attempts} & {t.id for t in done_before}
    # The interrupted members resumed from their saved state rather than starting over.
    assert [o.uid for o in read_owners(store, "local", "resume")] == [key.rsplit("/", 1)[1]]  # the same run, continued
    log = (store_root / key / "logs" / f"{member_id}.log").read_text()
    assert "resum" in log.lower()

    # 4. The report: a front for every iteration, figures, and the trajectories.
    report = store_root / key / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [0, 1]
    for it in summary["iterations"]:
        assert len(it["front"]) == 3 and all(p["kl"] is not None for p in it["front"])
    assert summary["export"]["eta"] == exported["eta"]
    assert (report / "report.html").stat().st_size > 10_000
    assert (report / "pareto.png").is_file()
    # The timeline: every step trained by the end, the killed attempt and its successor, no admission.
    timeline = summary["timeline"]
    assert timeline["executor"] == "local" and timeline["admission"] is None
    assert timeline["progress"][-1][1] == 1.0 and (report / "timeline.png").is_file()
    member = [a for a in timeline["attempts"] if a["task"] == member_id]
    # The killed attempt (closed as interrupted by the second runner, ended at its log's last write),
    # then the one that resumed.
    assert [a["status"] for a in member] == ["interrupted", "succeeded"], member
    assert member[0]["start"] <= member[0]["end"] <= member[1]["start"]
    assert not [a for a in timeline["attempts"] if a["status"] == "running"]
