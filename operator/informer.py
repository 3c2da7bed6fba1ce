"""The operator's own informer of its Jobs: one LIST + WATCH of the Jobs labelled kwarp.dev/run, in a thread.

kopf's `on.event` handler for Jobs cost the operator ~9-10 ms of CPU per Job in kopf's event loop
(docs/performance.md, "The operator's CPU per Job"): every Job event went through kopf's per-event machinery
(body, patch and memory objects, cause detection, handler invocation, logging contexts) for a handler that
updates the Job index and queues a run. Here each event costs a `json.loads` of its line and the sink's call.

    LIST  /apis/batch/v1[/namespaces/<ns>]/jobs?labelSelector=kwarp.dev/run   (pages of `page_size`)
    WATCH the same, from the LIST's resourceVersion, with bookmarks, ended by the server after `timeout_seconds`
          -> resumed from the last resourceVersion seen (an event's or a bookmark's)
    410 Gone / Expired (the version left the API server's window) -> LIST again; a Job known before and
          missing from the new LIST is reported deleted (its deletion fell in the gap)
    any other error -> reconnect after a backoff (doubling up to `backoff[1]`), resumed where it was

The sink gets each Job (a LIST's items too) as parsed JSON, with `deleted`. It is called on the informer's
thread, one event at a time, in the order the API server sent them. Credentials come from `configuration()`,
the reconciler's (operator/app.py), read again for every connection after an error (a rotated token).

No kubernetes model objects are built: the Job index keeps plain dicts (operator/jobrecord.py), and building
models costs more than the rest of an event's handling together. The kubernetes client's `Watch` (with
`deserialize=False`) would parse the same lines, through a generator and a str decode per line more.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import kubernetes

from .jobs import LABEL_RUN

log = logging.getLogger(__name__)

Sink = Callable[[dict[str, Any], bool], None]  # (the Job, deleted)
Configure = Callable[[], kubernetes.client.Configuration]


class Expired(Exception):
    """The watch's resourceVersion is no longer served (410 Gone): LIST again."""


def _kept_meta(job: dict[str, Any]) -> dict[str, Any]:
    """What a deletion found by a relist reports of a Job: enough for the sink to find its run and its uid."""
    meta = job.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels", "ownerReferences") if k in meta}}


class JobInformer:
    """LIST + WATCH of the Jobs labelled `selector` in `namespace` (None: every namespace), on a thread of its own."""

    def __init__(self, configuration: Configure, sink: Sink, *, namespace: str | None = None,
                 selector: str = LABEL_RUN, timeout_seconds: int = 600, page_size: int = 500,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:  # fmt: skip
        self.namespace = namespace
        self._configuration = configuration
        self._sink = sink
        self._selector = selector
        self._timeout = timeout_seconds  # real API servers end watches anyway; kopf's server_timeout is the same
        self._page = page_size
        self._backoff = backoff
        self._rv: str | None = None  # None: LIST next
        self._known: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> _kept_meta of the live Job
        self._client: kubernetes.client.ApiClient | None = None
        self._response: Any = None  # the open watch, to interrupt on stop
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.lists = 0  # LISTs made (the first and each relist)
        self.errors = 0  # connections that failed (reconnected after a backoff)
        self.last_event = time.monotonic()

    @property
    def _path(self) -> str:
        ns = f"/namespaces/{quote(self.namespace)}" if self.namespace else ""
        return f"/apis/batch/v1{ns}/jobs"

    # -- life
    def start(self) -> JobInformer:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                suffix = f"-{self.namespace}" if self.namespace else ""
                self._thread = threading.Thread(target=self._run, name=f"kwarp-job-informer{suffix}", daemon=True)
                self._thread.start()
        return self

    def interrupt(self) -> None:
        """Tell the thread to stop and break off its watch, without waiting for it (`stop` waits)."""
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks the thread's read of the watch at once (urllib3 >= 2.3)
            except Exception:  # noqa: BLE001 - closed meanwhile
                pass

    def stop(self, timeout: float = 10.0) -> None:
        self.interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"the Job informer ({self.namespace or 'all namespaces'}) did not stop within {timeout} s")

    def alive(self) -> bool:
        """Started and running (not stopped, not dead): what the liveness probe asks."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def health(self) -> dict[str, Any]:
        return {"alive": self.alive(), "lists": self.lists, "errors": self.errors,
                "seconds_since_last_event": round(time.monotonic() - self.last_event, 1)}  # fmt: skip

    # -- the thread
    def _run(self) -> None:
        delay = self._backoff[0]
        try:
            while not self._stopping.is_set():
                try:
                    if self._rv is None:
                        self._list()
                    self._watch()  # until the server ends it (timeoutSeconds): then resumed from self._rv
                    delay = self._backoff[0]
                except Expired:
                    log.info("Job informer (%s): resourceVersion %s expired, listing again", self.namespace or "all", self._rv)
                    self._rv = None
                except Exception as err:  # noqa: BLE001 - any failure: reconnect, the level-triggered passes catch up
                    if self._stopping.is_set():
                        break
                    self.errors += 1
                    log.warning("Job informer (%s): %s; reconnecting in %.1f s", self.namespace or "all", err, delay)
                    self._drop_client()  # the next connection reads the configuration again (a rotated token)
                    self._stopping.wait(delay)
                    delay = min(2 * delay, self._backoff[1])
        finally:
            self._drop_client()

    def _api(self) -> kubernetes.client.ApiClient:
        if self._client is None:
            self._client = kubernetes.client.ApiClient(self._configuration())
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _get(self, query: list[tuple[str, str]], read_timeout: float) -> Any:
        try:
            return self._api().call_api(
                self._path, "GET", query_params=query, header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=(10, read_timeout),
            )  # fmt: skip
        except kubernetes.client.ApiException as err:
            if err.status == 410:
                raise Expired() from None
            raise

    def _list(self) -> None:
        items: list[dict[str, Any]] = []
        rv: str | None = None
        cont = ""
        while True:
            query = [("labelSelector", self._selector), ("limit", str(self._page))] + ([("continue", cont)] if cont else [])
            response = self._get(query, 60)
            listing = json.loads(response.data)
            response.release_conn()
            meta = listing.get("metadata") or {}
            rv = rv or meta.get("resourceVersion")  # the first page's: the version the whole LIST is served at
            items.extend(listing.get("items") or [])
            cont = meta.get("continue") or ""
            if not cont:
                break
        self.lists += 1
        self.last_event = time.monotonic()
        listed = {}
        for job in items:
            meta = job.get("metadata") or {}
            listed[(meta.get("namespace") or "", meta.get("name") or "")] = _kept_meta(job)
        # Deletions in the gap first (a Job of the same name may be listed again, a new one: its uid differs).
        for key, kept in list(self._known.items()):
            if key not in listed or listed[key]["metadata"].get("uid") != kept["metadata"].get("uid"):
                self._deliver(kept, True)
        self._known = listed
        for job in items:
            self._deliver(job, False)
        self._rv = rv

    def _watch(self) -> None:
        query = [("watch", "true"), ("labelSelector", self._selector), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(self._timeout))]  # fmt: skip
        if self._rv:
            query.append(("resourceVersion", self._rv))
        # The read timeout: a silent watch is ended by the server after timeoutSeconds, and bookmarks come
        # more often than that on a real API server; a connection silent for longer than that is dead.
        response = self._get(query, self._timeout + 60)
        self._response = response
        try:
            if not self._stopping.is_set():
                for line in _lines(response):
                    self._event(json.loads(line))
        except BaseException:
            response.close()  # a connection broken off midway is not reused
            raise
        else:
            response.release_conn()
        finally:
            self._response = None

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise Expired()
            raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        meta = obj.get("metadata") or {}
        self.last_event = time.monotonic()
        if meta.get("resourceVersion"):
            self._rv = meta["resourceVersion"]
        if kind == "BOOKMARK":
            return
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if kind == "DELETED":
            self._known.pop(key, None)
            self._deliver(obj, True)
        else:
            self._known[key] = _kept_meta(obj)
            self._deliver(obj, False)

    def _deliver(self, job: dict[str, Any], deleted: bool) -> None:
        try:
            self._sink(job, deleted)
        except Exception:  # a sink's failure on one Job must not cost the watch; the resync timer catches up
            log.exception("Job informer: handling %s failed", (job.get("metadata") or {}).get("name"))


def _lines(response: Any) -> Iterator[bytes]:
    """The watch's lines as they arrive (one JSON event each); a chunk may end inside a line."""
    rest = b""
    for chunk in response.stream(amt=None, decode_content=False):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest


class JobInformers:
    """One JobInformer per watched namespace (an operator limited to namespaces may not list cluster-wide), or
    one for every namespace; started and stopped together."""

    def __init__(self, configuration: Configure, sink: Sink, namespaces: Sequence[str] = (), **kwargs: Any) -> None:
        scopes: list[str | None] = list(dict.fromkeys(namespaces)) or [None]
        self.informers = [JobInformer(configuration, sink, namespace=ns, **kwargs) for ns in scopes]

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    def stop(self, timeout: float = 10.0) -> None:
        for informer in self.informers:
            informer.interrupt()  # all at once, then each waited for
        for informer in self.informers:
            informer.stop(timeout)

    def alive(self) -> bool:
        return all(informer.alive() for informer in self.informers)

    def health(self) -> dict[str, Any]:
        return {informer.namespace or "*": informer.health() for informer in self.informers}
