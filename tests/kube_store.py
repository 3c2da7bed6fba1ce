"""The test API server's object store: what it keeps beside kmock's objects, and the reads it serves.

`ObjectStore` is the lower half of tests/kube_server.py's `ApiServer`: resourceVersions, the index of
live objects by namespace and label (tests/kube_index.py), owners and their dependents, the watch journal;
and the reads served from them: LIST, GET and watch, with `labelSelector` and `fieldSelector`
(metadata.name, metadata.namespace); a watch from a `resourceVersion` replays only later events (410 Gone
when they were dropped); `timeoutSeconds` ends a watch.

Mechanics: kmock 0.8 matches each request against every request it recorded (quadratic over an
operator's thousands), so the server keeps a short log and serves the object API itself, leaving only
discovery to kmock's reactions. Reads cost what they select, not what the server holds (so that
benchmarks/operator.py measures the operator): a LIST checks only the candidates its namespace and label
requirements pick from an index (tests/kube_index.py), and a watch resumed from a resourceVersion reads
the journal back to that version only (`examined` counts both).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import k8s_dicts
from kmock._internal.references import resource as Resource

from tests import kube_admission
from tests.kube_index import (
    ObjectIndex,
    field_selector_matches,
    label_selector_matches,
    parse_field_selector,
    parse_label_selector,
)
from tests.kube_json import WatchEvent, json_copy, watch_line

Obj = dict[str, Any]
Key = tuple[Resource, str | None, str]


def resource_key(res: Resource) -> tuple[str | None, str | None, str | None]:
    """What kmock's resource equality compares (group, version, plural), as a tuple: comparing resources
    through kmock's __eq__ (a runtime-checked Protocol, or a string parsed on each call) was ~5% of the
    API server's CPU."""
    return res.group, res.version, res.plural


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_uids(obj: Obj) -> set[str]:
    return {ref["uid"] for ref in obj.get("metadata", {}).get("ownerReferences", []) or [] if ref.get("uid")}


def _status_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or {})


@attrs.define(kw_only=True)
class ObjectStore(kmock.KubernetesEmulator):
    """kmock's emulator with indexes kept beside its object store, which stays the one source of truth
    (`.objects`), and the reads (list, watch, get) served from them. Writes are tests/kube_server.py's."""

    journal_limit: int = 100_000  # watch events kept per resource; watching from an older version -> 410
    history_limit: int = 8  # object versions kept per object in kmock's history (memory stays flat)

    _rv: int = attrs.field(default=0, init=False)
    _index: dict[Resource, dict[tuple[str | None, str], k8s_dicts.Object]] = attrs.field(factory=dict, init=False)
    # The live objects by namespace and label, for LISTs (tests/kube_index.py): kept by _store and _erase.
    _live_index: dict[Resource, ObjectIndex] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Key] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[Key]] = attrs.field(factory=dict, init=False)
    _journal: dict[Resource, collections.deque[tuple[int, Obj]]] = attrs.field(factory=dict, init=False)
    _journal_floor: dict[Resource, int] = attrs.field(factory=dict, init=False)
    _columns: dict[Resource, list[Obj]] = attrs.field(factory=dict, init=False)
    # Objects and journal events a LIST or a watch's backlog checked against its request: what reads cost
    # the server (tests show it follows what a request selects, not how many objects the server holds).
    examined: int = attrs.field(default=0, init=False)
    # (group, version, plural) -> the declared resource (a key of kmock's `resources`) that equals it: `_info`
    # runs several times per request, and scanning the declared resources with kmock's __eq__ was not cheap.
    _declared: dict[tuple[str | None, str | None, str | None], Resource] = attrs.field(factory=dict, init=False)
    # The object last emitted (as given to _emit) and its event, whose JSON answers the write that emitted it.
    _last_emitted: tuple[Obj, WatchEvent] | None = attrs.field(default=None, init=False)

    def _info(self, res: Resource) -> kmock.ResourceInfo | None:
        declared = self._declared.get(resource_key(res))
        if declared is not None and declared in self.resources:  # still declared (a test may undeclare it)
            return self.resources[declared]  # type: ignore[return-value]
        for declared in self.resources:
            if resource_key(declared) == resource_key(res):
                self._declared[resource_key(res)] = declared
                return self.resources[declared]  # type: ignore[return-value]
        return None

    @staticmethod
    def _qualified(res: Resource) -> str:
        """'jobs.batch', 'warpruns.kwarp.dev', 'pods': how the API server names a resource in messages."""
        return f"{res.plural}.{res.group}" if res.group else str(res.plural)

    @staticmethod
    def _wants_table(request: kmock.Request) -> bool:
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
        return kube_admission.wants_table(accept)

    # ------------------------------------------------------------------ bookkeeping

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _live(self, key: Key) -> Obj | None:
        obj = self._index.get(key[0], {}).get((key[1], key[2]))
        return None if obj is None or obj.deleted else obj.raw

    def _existing(self, request: kmock.Request) -> tuple[Key, Obj]:
        """The object a request names, or the API server's 404 (a Status naming it)."""
        key: Key = (request.resource, request.namespace, request.name)
        current = self._live(key)
        if current is None:
            raise _status_error(404, "NotFound", f'{self._qualified(request.resource)} "{request.name}" not found',
                                name=request.name, group=request.resource.group, kind=request.resource.plural)  # fmt: skip
        return key, current

    def _store(self, key: Key, new: Obj) -> None:
        res, ns, name = key
        old = self._live(key)
        if old is not None:
            self._unindex_owners(key, old)
        slot = self._index.setdefault(res, {}).get((ns, name))
        if slot is None:
            self.objects[res, ns, name] = new
            slot = self.objects[res, ns, name]
            self._index[res][(ns, name)] = slot
        else:
            slot.history.append(new)
            if len(slot.history) > self.history_limit:
                del slot.history[: -self.history_limit]
        self._live_index.setdefault(res, ObjectIndex()).put(ns, name, new)
        self._uids[new["metadata"]["uid"]] = key
        for uid in _owner_uids(new):
            self._dependents.setdefault(uid, set()).add(key)

    def _unindex_owners(self, key: Key, obj: Obj) -> None:
        for uid in _owner_uids(obj):
            deps = self._dependents.get(uid)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self._dependents[uid]

    async def _emit(self, res: Resource, kind: str, obj: Obj) -> None:
        event = WatchEvent(kind, json_copy(obj))
        self._last_emitted = (obj, event)  # the write that emitted it answers with the same JSON (_answer)
        journal = self._journal.setdefault(res, collections.deque())
        journal.append((int(obj["metadata"]["resourceVersion"]), event))
        if len(journal) > self.journal_limit:
            dropped, _ = journal.popleft()
            self._journal_floor[res] = dropped
        await self._buses[res].put(event)

    # ------------------------------------------------------------------ reads

    def _selected(self, request: kmock.Request, obj: Obj) -> bool:
        self.examined += 1
        meta = obj.get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        try:
            return label_selector_matches(request.params.get("labelSelector"), meta.get("labels")) and \
                field_selector_matches(request.params.get("fieldSelector"), obj)
        except ValueError as err:
            raise _status_error(400, "BadRequest", str(err)) from None

    def _matching(self, request: kmock.Request) -> list[Obj]:
        """The live objects a LIST (or a watch from no version) selects, in creation order: only the
        index's candidates for its namespace and label requirements are checked against it."""
        index = self._live_index.get(request.resource)
        if index is None:
            return []
        try:
            requirements = parse_label_selector(request.params.get("labelSelector") or "")
            name = request.name
            for field, equal, value in parse_field_selector(request.params.get("fieldSelector") or ""):
                if field == "metadata.name" and equal:
                    name = value if name in (None, value) else "\0"  # two different names: nothing
        except ValueError as err:
            raise _status_error(400, "BadRequest", str(err)) from None
        candidates = index.candidates(request.namespace, name, requirements)
        return [obj for obj in candidates if self._selected(request, obj)]

    def _journal_since(self, request: kmock.Request, since: int) -> list[Obj]:
        """The journal's events after `since` that the watch selects: read from the newest back, so a watch
        resumed from a recent version costs what it missed, not the whole journal."""
        out = []
        for rv, event in reversed(self._journal.get(request.resource, ())):
            if rv <= since:
                break
            if self._selected(request, event["object"]):
                out.append(event)  # as the bus gives it to every watcher: never changed once emitted
        out.reverse()
        return out

    async def _serve_fetch(self, request: kmock.Request) -> Obj:
        if self._info(request.resource) is None:
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            return self._existing(request)[1]

    async def _serve_list(self, request: kmock.Request) -> Obj:
        info = self._info(request.resource)
        if info is None:
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._matching(request)
            rv = str(self._rv)
        return {"apiVersion": "v1", "kind": f"{info.kind}List", "metadata": {"resourceVersion": rv}, "items": items}

    async def _serve_watch(self, request: kmock.Request):  # type: ignore[override]
        yield b""  # send the headers now: a watch may stay silent for long
        res = request.resource
        since = request.params.get("resourceVersion")
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        bus = self._buses[res]
        async with self._lock:
            marker = await bus.mark()
            if since in (None, "", "0"):
                backlog = [{"type": "ADDED", "object": o} for o in self._matching(request)]
            elif int(since) < self._journal_floor.get(res, 0):
                backlog = [{"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "reason": "Expired", "code": 410, "message": f"too old resource version: {since}"}}]
            else:
                backlog = self._journal_since(request, int(since))
        try:
            for event in backlog:
                yield event
            if backlog and backlog[-1]["type"] == "ERROR":
                return
            try:
                async with asyncio.timeout(timeout):
                    async for event in bus.stream(since=marker):
                        if self._selected(request, event["object"]):
                            yield event
            except TimeoutError:
                return
        finally:
            await bus.unmark(marker)

    async def _stream(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """A watch: one JSON event per line, as long as the client listens (or timeoutSeconds)."""
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        try:
            table = self._wants_table(request)
            async for event in self._serve_watch(request):
                if event != b"":
                    if table and event["type"] != "ERROR":
                        obj = event["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        event = {**event, "object": kube_admission.table([obj], self._columns.get(request.resource), rv)}
                    await response.write(watch_line(event))
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away
        return response
