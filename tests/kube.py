"""The test cluster: an API server on loopback, the Job controller and kubelet stand-ins, the operator.

What `from tests.kube import ...` gives, and where each part lives:

- tests/kube_server.py `ApiServer`: kmock's `KubernetesEmulator` (a real HTTP server that kopf and the
  `kubernetes` client talk to) with the server-side behaviours of a real API server: uids,
  resourceVersions, generation, admission (tests/kube_admission.py) on create and every update, the
  `/status` subresource, merge and JSON patches, finalizers and owner-reference garbage collection;
- tests/kube_store.py `ObjectStore`: its indexes and watch journal, and the reads (list, get, watch
  with label and field selectors, resumed from a resourceVersion) served from them;
- tests/kube_jobs.py: the runners that watch Jobs like the Job controller would: `StatusJobRunner`
  marks them running, complete or failed through `patch_namespaced_job_status` (integration tests
  decide outcomes);
- tests/kube_pods.py: `ProcessJobRunner` executes the Job's container command as a local process with
  the Job's env (e2e tests) and writes the status back when it exits;
- here: `Cluster` serves an ApiServer on loopback from a thread and writes a kubeconfig for it;
  `RunningOperator` runs `kwarp operator` in a thread against it; `wait_for` and `wait_value` poll.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import yaml

# Re-exported: these were defined here before the emulator was split by role.
from tests.kube_index import (  # noqa: F401
    ObjectIndex,
    field_selector_matches,
    label_selector_matches,
    parse_field_selector,
    parse_label_selector,
)
from tests.kube_jobs import (  # noqa: F401
    COMPLETION_INDEX_FIELD,
    COMPLETION_INDEX_KEY,
    JobRunner,
    Outcome,
    StatusJobRunner,
    index_ranges,
    job_status_failed,
    job_status_running,
    job_status_succeeded,
    job_status_suspended,
)
from tests.kube_pods import ProcessJobRunner  # noqa: F401
from tests.kube_server import (  # noqa: F401
    CRDS,
    EVENTS,
    FOREGROUND,
    JOBS,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICES,
    ApiServer,
    merge_patch,
)
from tests.kube_store import Key, Obj, ObjectStore, now_rfc3339  # noqa: F401

# ------------------------------------------------------------------------------------- the harness


class Cluster:
    """An ApiServer on a loopback port, served from its own thread; a kubeconfig that points at it."""

    def __init__(self, workdir: Path, crds: Sequence[Obj] = (), namespace: str = "default"):
        self.workdir = Path(workdir)
        self.namespace = namespace
        self._crds = list(crds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: ApiServer | None = None
        self.url = ""
        self.kubeconfig = self.workdir / "kubeconfig.yaml"

    def __enter__(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._serve, name="api-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the API server did not start: {self._error!r}")
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": self.namespace}}],
        }))
        self.raw("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": self.namespace}})
        for crd in self._crds:
            self.raw("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            server = ApiServer()
            server.declare_builtins()
            for crd in self._crds:
                server.declare_crd(crd)
            async with server, kmock.Server(server) as http:
                self.server = server
                self.url = str(http.url).rstrip("/")
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as err:  # surfaced by __enter__
            self._error = err
            self._ready.set()

    def configuration(self) -> kubernetes.client.Configuration:
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return cfg

    def client(self) -> kubernetes.client.ApiClient:
        return kubernetes.client.ApiClient(self.configuration())

    def raw(self, method: str, path: str, body: Any = None, *, query: list | None = None,
            content_type: str = "application/json") -> Any:
        """One HTTP call with a JSON body; returns the decoded JSON or raises ApiException."""
        client = self.client()
        response = client.call_api(
            path, method, query_params=query or [], header_params={"Content-Type": content_type,
                                                                   "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
        )
        data = response.data
        return json.loads(data) if data else None


# What a predicate raises while the state it reads is still partial: a key or item not there yet (a status
# member listed before it has a Job, a condition not yet set: `m["job"]`, `cond["status"]`), or None
# where a dict will be (`None["x"]`, `None >= 3`). That is "not yet", as on a slower machine, where the
# first poll comes after the field is written; any other exception is raised at once.
NOT_YET = (LookupError, TypeError)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> Any:
    """Poll until predicate() is truthy; return its value, or fail naming what was awaited.

    A predicate raising one of NOT_YET counts as not met; if the wait times out, the failure names the
    last such exception (and is raised from it, with its traceback), so that a field that never appears
    reads as what it is rather than as a bare timeout."""
    deadline = time.monotonic() + timeout
    raised = 0
    last: Exception | None = None
    while True:
        try:
            value = predicate()
        except NOT_YET as err:
            value, raised, last = None, raised + 1, err
        if value:
            return value
        if time.monotonic() > deadline:
            try:
                text = message() if callable(message) else message
            except NOT_YET as err:
                text = f"a condition (its message raised {err!r})"
            why = f"; the predicate raised {raised} time(s), last: {last!r}" if last is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {text}{why}") from last
        time.sleep(interval)


# ------------------------------------------------------------------------------------- the operator


class RunningOperator:
    """`kwarp operator` in a thread of this process, against a Cluster (its own kopf registry and loop)."""

    def __init__(self, cluster: Cluster, options: Any,
                 configuration: Callable[[], kubernetes.client.Configuration] | None = None):  # fmt: skip
        self.cluster = cluster
        self.options = options
        self.configuration = configuration or cluster.configuration
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> RunningOperator:
        from kwarp.operator.app import serve

        def main() -> None:
            try:
                asyncio.run(serve(self.options, stop_flag=self._stop, ready_flag=self._ready,
                                  configuration=self.configuration))
            except BaseException as err:  # surfaced by the tests
                self.error = err
                self._ready.set()

        self._thread = threading.Thread(target=main, name="kwarp-operator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("the operator did not stop within 30 s")


def wait_value(fetch: Callable[[], Any], accept: Callable[[Any], Any], timeout: float = 30.0,
               message: str | Callable[[], str] = "value") -> Any:
    """Poll fetch() until accept(value) holds; return that value. Either raising one of NOT_YET is "not
    yet", as in wait_for."""
    box: list[Any] = []

    def ready() -> bool:
        box[:] = [fetch()]
        return bool(accept(box[0]))

    wait_for(ready, timeout, message=message)
    return box[0]
