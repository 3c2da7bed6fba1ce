"""The kubelet of the test cluster: `ProcessJobRunner` runs each Job's container as a local process."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.kube_jobs import COMPLETION_INDEX_FIELD, JobRunner, _Tracked, pod_failure_action
from tests.kube_store import Obj

if TYPE_CHECKING:
    from tests.kube import Cluster


class ProcessJobRunner(JobRunner):
    """E2E tests' kubelet: runs a Job's container command as a local process with the Job's env.

    Volumes of the pod are folders under `workdir`; env values under a mount path are rewritten to
    the folder (so HOME=/scratch works). `secretKeyRef` env is read from the Secret, like a kubelet.
    Each pod has its own network namespace in a cluster: here the ports a container declares are
    remapped to free local ports (an env value naming a declared port is rewritten to match).
    The container command `kwarp` (and `torchrun`) resolves to this interpreter's environment.
    At most `parallel` Jobs run at once: further Jobs wait, as on a full node. An Indexed Job runs one
    process per index (its pods), each with its index (JOB_COMPLETION_INDEX and the annotation's
    fieldRef) and the pods' stable host names (<pod>.<subdomain>) resolving to loopback; the ports the
    pods of a Job with a subdomain declare are one set per member (PET_NNODES consecutive pods), so a
    member's pods reach each other (a gang of one-node members' pods each get their own). It succeeds when every pod has, and fails at the first pod that fails (the
    others are stopped), as with backoffLimit 0.
    """

    def __init__(self, cluster: Cluster, workdir: Path, parallel: int = 2, namespace: str | None = None):
        super().__init__(cluster, namespace)
        self.workdir = Path(workdir)
        self.parallel = parallel
        self.procs: dict[str, subprocess.Popen] = {}
        self.waiting: list[str] = []
        self.logs: dict[str, Path] = {}
        self._reaper = threading.Thread(target=self._reap, name="process-reaper", daemon=True)
        self._reaper.start()

    def on_start(self, tracked: _Tracked) -> None:
        name = tracked.job["metadata"]["name"]
        if name not in self.waiting:
            self.waiting.append(name)
        self._launch_waiting()

    def _launch_waiting(self) -> None:
        with self.lock:
            while self.waiting and len(self.procs) < self.parallel:
                name = self.waiting.pop(0)
                tracked = self.jobs.get(name)
                if tracked is None or tracked.finished or tracked.suspended:
                    continue
                self.procs[name] = self._spawn(tracked.job)

    def _spawn(self, job: Obj) -> subprocess.Popen | _Pods:
        name = job["metadata"]["name"]
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        # Ports are per Job: the pods of an Indexed Job meet on the one its index 0 declares.
        ports = {str(p["containerPort"]): str(_free_port()) for p in container.get("ports", [])}
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        if job["spec"].get("completionMode") != "Indexed":
            return self._spawn_pod(job, name, ports, log)
        indexes = range(int(job["spec"]["completions"]))
        if pod.get("subdomain"):
            # Pods that talk to each other: a multi-node member's, or a gang of them (PET_NNODES pods per
            # member, consecutive indexes, kwarp.core.placement). On loopback the pods of one member meet on
            # one set of ports; each member has its own, as each pod has its own network in a cluster.
            nodes = int(next((e["value"] for e in container.get("env", []) if e["name"] == "PET_NNODES"), len(indexes)))
            sets = [ports] + [{k: str(_free_port()) for k in ports} for _ in range(1, -(-len(indexes) // nodes))]
            return _Pods([self._spawn_pod(job, f"{name}-{i}", sets[i // nodes], log, index=i) for i in indexes])
        # A gang of members (operator/jobs.py gang_manifest): each pod has its own network, so its own ports.
        return _Pods([self._spawn_pod(job, f"{name}-{i}", {k: str(_free_port()) for k in ports}, log, index=i)
                      for i in indexes])  # fmt: skip

    def _spawn_pod(self, job: Obj, pod_name: str, ports: dict[str, str], log: Path,
                   index: int | None = None) -> subprocess.Popen:
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mounts = {m["mountPath"]: self.workdir / pod_name / m["name"] for m in container.get("volumeMounts", [])}
        for folder in mounts.values():
            folder.mkdir(parents=True, exist_ok=True)
        subdomain = pod.get("subdomain")

        def local(value: str) -> str:
            for mount, folder in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(folder) + value[len(mount):]
            if subdomain and value.endswith("." + subdomain):  # <pod>.<subdomain>: a pod of this Job
                return "127.0.0.1"
            return value

        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH") if k in os.environ}
        env["OMP_NUM_THREADS"] = "1"
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = ports.get(item["value"]) or local(item["value"])
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                env[item["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == COMPLETION_INDEX_FIELD:
                env[item["name"]] = str(index)
        bindir = Path(sys.executable).parent
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and argv[0] in ("kwarp", "torchrun"):
            argv[0] = str(bindir / argv[0])
        with open(log, "ab") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.workdir, start_new_session=True)

    def _reap(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                done = [(n, code) for n, p in self.procs.items() if (code := p.poll()) is not None]
                for name, code in done:
                    del self.procs[name]
                    tracked = self.jobs.get(name)
                    if tracked is None or tracked.suspended:
                        continue
                    if code == 0:
                        self.succeed(name)
                        continue
                    tail = self.logs[name].read_text(errors="replace").strip().splitlines()[-20:]
                    message = "\n".join(tail)[-2000:]
                    if tracked.job["spec"].get("completionMode") != "Indexed" and \
                            pod_failure_action(tracked.job, code, []) == "Ignore":
                        self.replace_pod(name, code, message)  # not charged: the Job runs a new pod
                    else:
                        self.fail(name, exit_code=code, message=message)
            if done:
                self._launch_waiting()
            time.sleep(0.1)

    def _terminate(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        for one in proc.procs if isinstance(proc, _Pods) else [proc] if proc is not None else []:
            _stop(one)

    def on_suspend(self, tracked: _Tracked) -> None:
        self._terminate(tracked.job["metadata"]["name"])

    def on_deleted(self, tracked: _Tracked) -> None:
        self._terminate(tracked.job["metadata"]["name"])

    def on_deadline(self, tracked: _Tracked) -> None:
        self._terminate(tracked.job["metadata"]["name"])

    def shutdown(self) -> None:
        with self.lock:
            for name in list(self.procs):
                self._terminate(name)
        self._reaper.join(5)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs.get(name)
        return "" if path is None or not path.exists() else "\n".join(path.read_text().splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM a pod's process group (torchrun forwards it to its trainers), SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _Pods:
    """The processes of an Indexed Job's pods: done with 0 when all are, failed at the first failure
    (the other pods are stopped, as the Job controller does once backoffLimit 0 is exceeded)."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs = procs

    def poll(self) -> int | None:
        codes = [p.poll() for p in self.procs]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            for p in self.procs:
                _stop(p)
            return failed
        return None if None in codes else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
