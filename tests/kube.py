"""A Kubernetes API server for tests, and the Job runners that stand in for the Job controller.

`ApiServer` subclasses kmock's `KubernetesEmulator` (a real HTTP server that kopf and the `kubernetes`
client talk to) and adds what a real API server does and the emulator leaves out, so that the
operator is tested against Kubernetes semantics rather than the emulator's shortcuts:

- `metadata.uid`, an increasing `resourceVersion`, `creationTimestamp`, `generation` (bumped when
  anything but metadata and status changes), `generateName`;
- admission as a real server does it (tests/kube_admission.py), on create and on every update: built-in
  kinds against Kubernetes' strict OpenAPI schemas at the chart's floor version plus the metadata rules;
  CRDs against the apiextensions rules (a created CRD is then served, with its printer columns);
  custom resources through their CRD's structural schema: unknown fields pruned (refused under
  fieldValidation=Strict, a Warning header under Warn), nulls dropped, defaults filled in (so an operator
  sees, and must cope with, every default materialised in spec and status), then validated. A kind
  added with `declare(...)` (a Service, say) is validated like the others with no more code: a test that
  sends an invalid object gets the 422 a cluster would answer;
- the Table format for `kubectl get` and the OpenAPI v3 documents kubectl reads before it applies;
- create of an existing name -> 409 AlreadyExists; patch or delete of a missing one -> 404 NotFound;
- the `/status` subresource: a status patch changes only `.status`, a main-resource patch never does;
- JSON merge patches (RFC 7386) and JSON patches (a failed `test` op -> 422, as kopf expects);
  a patch that changes nothing is a no-op (no new resourceVersion, no watch event);
- `labelSelector` and `fieldSelector` (metadata.name, metadata.namespace) on list and watch;
  watch from a `resourceVersion` replays only later events (410 Gone when they were dropped);
  `timeoutSeconds` ends a watch;
- deletion: finalizers hold an object (deletionTimestamp set) until they are removed; owner-reference
  garbage collection cascades to dependents (Background), waits for them (Foreground, through the
  `foregroundDeletion` finalizer) or orphans them (Orphan, the REST default for batch/v1 Jobs).

Mechanics: kmock 0.8 matches each request against every request it recorded (quadratic over an
operator's thousands), so this server keeps a short log and serves the object API itself, leaving only
discovery to kmock's reactions. Reads cost what they select, not what the server holds (so that
benchmarks/operator.py measures the operator): a LIST checks only the candidates its namespace and label
requirements pick from an index (tests/kube_index.py), and a watch resumed from a resourceVersion reads
the journal back to that version only (`examined` counts both); it also parses /api/v1/namespaces[/<name>] (kmock reads "namespaces"
there as a namespace prefix), since kopf lists and watches Namespaces and CRDs.

`Cluster` serves an ApiServer on loopback from a thread and writes a kubeconfig for it. The runners
watch Jobs like the Job controller and the kubelet would: `StatusJobRunner` marks them running,
complete or failed through `patch_namespaced_job_status` (integration tests decide outcomes);
`ProcessJobRunner` executes the Job's container command as a local process with the Job's env
(e2e tests) and writes the status back when it exits.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import dataclasses
import datetime
import json
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kubernetes
import yaml
from kmock._internal import k8s_dicts
from kmock._internal.enums import action as Action
from kmock._internal.references import resource as Resource

from tests import kube_admission
from tests.kube_admission import Refused
from tests.kube_index import (  # noqa: F401  (re-exported: the selectors were defined here before)
    ObjectIndex,
    field_selector_matches,
    label_selector_matches,
    parse_field_selector,
    parse_label_selector,
)

Obj = dict[str, Any]
Key = tuple[Resource, str | None, str]

JOBS = "batch/v1/jobs"
PODS = "v1/pods"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?$")
FOREGROUND = "foregroundDeletion"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------- pure helpers


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _owner_uids(obj: Obj) -> set[str]:
    return {ref["uid"] for ref in obj.get("metadata", {}).get("ownerReferences", []) or [] if ref.get("uid")}


def _status_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or {})


# ------------------------------------------------------------------------------------- the server


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with the server-side behaviours of a real API server (see the module docstring).

    Writes (create, patch, delete) are served here, not by kmock's fallbacks; reads (list, watch, get)
    use indexes kept beside kmock's object store, which stays the one source of truth (`.objects`).
    """

    journal_limit: int = 100_000  # watch events kept per resource; watching from an older version -> 410
    requests_kept: int = 100  # of kmock's request log
    history_limit: int = 8  # object versions kept per object in kmock's history (memory stays flat)

    _rv: int = attrs.field(default=0, init=False)
    _index: dict[Resource, dict[tuple[str | None, str], k8s_dicts.Object]] = attrs.field(factory=dict, init=False)
    # The live objects by namespace and label, for LISTs (tests/kube_index.py): kept by _store and _erase.
    _live_index: dict[Resource, ObjectIndex] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Key] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[Key]] = attrs.field(factory=dict, init=False)
    _journal: dict[Resource, collections.deque[tuple[int, Obj]]] = attrs.field(factory=dict, init=False)
    _journal_floor: dict[Resource, int] = attrs.field(factory=dict, init=False)
    _schemas: dict[Resource, Obj] = attrs.field(factory=dict, init=False)
    _columns: dict[Resource, list[Obj]] = attrs.field(factory=dict, init=False)
    # (bearer token, apiGroup, resource[/subresource], RBAC verb, namespace) of every request to the object API,
    # and the implicit `update <owner>/finalizers` a blockOwnerDeletion owner reference asks for (the
    # OwnerReferencesPermissionEnforcement admission check): what an authorizer would be asked.
    audit: set[tuple[str, str, str, str, str]] = attrs.field(factory=set, init=False)  # ..., namespace
    # Objects and journal events a LIST or a watch's backlog checked against its request: what reads cost
    # the server (tests show it follows what a request selects, not how many objects the server holds).
    examined: int = attrs.field(default=0, init=False)
    # Requests to the object API by (apiGroup, resource[/subresource], verb): how often each call is made.
    calls: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)

    # ------------------------------------------------------------------ declarations

    def declare(
        self,
        resource: str,
        kind: str,
        *,
        namespaced: bool = True,
        subresources: tuple[str, ...] = (),
        shortnames: tuple[str, ...] = (),
        singular: str | None = None,
    ) -> None:
        self.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            singular=singular or kind.lower(),
            shortnames=set(shortnames),
            subresources=set(subresources),
            verbs={"get", "list", "watch", "create", "patch", "delete"},
        )

    def declare_crd(self, crd: Obj) -> None:
        """Serve a CustomResourceDefinition's resource (names, scope, status subresource) from its manifest."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            resource = f"{spec['group']}/{version['name']}/{names['plural']}"
            if "schema" in version:
                self._schemas[Resource(resource)] = version["schema"]["openAPIV3Schema"]
            self._columns[Resource(resource)] = list(version.get("additionalPrinterColumns") or [])
            self.declare(
                resource,
                names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                subresources=tuple(version.get("subresources", {})),
                shortnames=tuple(names.get("shortNames", ())),
                singular=names.get("singular"),
            )

    def declare_builtins(self) -> None:
        self.declare(JOBS, "Job", subresources=("status",))
        self.declare(PODS, "Pod", subresources=("status",), shortnames=("po",))
        self.declare(SECRETS, "Secret")
        self.declare(SERVICES, "Service", shortnames=("svc",))
        self.declare(EVENTS, "Event", shortnames=("ev",))
        self.declare(NAMESPACES, "Namespace", namespaced=False, subresources=("status",), shortnames=("ns",))
        self.declare(CRDS, "CustomResourceDefinition", namespaced=False, subresources=("status",),
                     shortnames=("crd", "crds"))

    async def _serve_version(self, request: Any) -> Any:
        """kmock's APIResourceList, less what a real server never lists on a subresource: short names and
        categories (kubectl would otherwise warn that `wr` may also mean warpruns/status)."""
        listing = await super()._serve_version(request)
        for entry in listing.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"], entry["categories"] = [], []
        return listing

    def _info(self, res: Resource) -> kmock.ResourceInfo | None:
        for declared in self.resources:
            if declared == res:
                return self.resources[declared]  # type: ignore[return-value]
        return None

    def _admit(self, res: Resource, obj: Obj, request: kmock.Request) -> tuple[Obj, list[str]]:
        """The object as stored and the response's warnings, or Refused (see tests/kube_admission.py)."""
        info = self._info(res)
        kind = info.kind if info is not None and info.kind else str(res.plural)
        namespaced = bool(info.namespaced) if info is not None else True
        group = res.group or ""
        if res == CRDS:
            return kube_admission.admit_crd(obj), []
        schema = next((s for r, s in self._schemas.items() if r == res), None)
        if schema is not None:
            mode = kube_admission.field_validation(request.params)
            return kube_admission.admit_custom(obj, schema, kind=kind, group=group, namespaced=namespaced, mode=mode)
        kube_admission.admit_builtin(obj, kind=kind, group=group, namespaced=namespaced)
        return obj, []

    def _served(self) -> list[tuple[str, str, str, str, bool]]:
        return [(r.group or "", str(r.version), str(r.plural), i.kind or "", bool(i.namespaced))
                for r, i in self.resources.items() if r.plural and r.version]

    def _has_status(self, res: Resource) -> bool:
        info = self._info(res)
        return info is not None and "status" in info.subresources

    # ------------------------------------------------------------------ bookkeeping

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _live(self, key: Key) -> Obj | None:
        obj = self._index.get(key[0], {}).get((key[1], key[2]))
        return None if obj is None or obj.deleted else obj.raw

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
        event = {"type": kind, "object": copy.deepcopy(obj)}
        journal = self._journal.setdefault(res, collections.deque())
        journal.append((int(obj["metadata"]["resourceVersion"]), event))
        if len(journal) > self.journal_limit:
            dropped, _ = journal.popleft()
            self._journal_floor[res] = dropped
        await self._buses[res].put(event)

    # ------------------------------------------------------------------ writes

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.startswith("/openapi/v3"):
            gv = raw_request.path.removeprefix("/openapi/v3").strip("/")
            if not gv:
                return aiohttp.web.json_response(kube_admission.openapi_index(self._served()))
            parts = gv.split("/")
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            return aiohttp.web.json_response(kube_admission.openapi_group_version(self._served(), group, version))
        m = _NAMESPACE_PATH.match(raw_request.path)
        if m is None:
            return await super().__call__(raw_request)
        # kmock 0.8 reads /api/v1/namespaces[/<name>] as a namespace prefix, not as the Namespace
        # resource (kopf lists and watches namespaces): parse these paths here.
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        params = dict(raw_request.query)
        name, method = m["name"], raw_request.method.upper()
        if method == "GET" and params.get("watch", "").lower() in ("true", "1"):
            action = Action.WATCH
        elif name is None:
            action = {"GET": Action.LIST, "POST": Action.CREATE}.get(method)
        else:
            action = {"GET": Action.FETCH, "PATCH": Action.UPDATE, "DELETE": Action.DELETE}.get(method)
        request = kmock.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=params, headers=dict(raw_request.headers), data=data, body=body, text=body.decode(errors="replace"),
            action=action, resource=Resource("", "v1", "namespaces"), namespace=None, name=name, subresource=m["sub"],
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as err:
            return await self._render_error(err)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock records every request and matches each new one against all recorded ones (its DSL):
        # fine for a few dozen requests, quadratic for an operator's thousands. Keep a short tail, and
        # serve the object API here directly; only discovery (/api, /apis, ...) goes through the DSL.
        del self._requests[: -self.requests_kept]
        self._audit(request)
        res, act = request.resource, request.action
        if act in (Action.LIST, Action.FETCH) and request.params.get("watch", "").lower() in ("true", "1"):
            act = Action.WATCH  # the kubernetes client sends watch=True; the server parses booleans like Go
        if res is None or act is None or (act == Action.LIST and res.plural is None):
            return await super()._handle(request)
        if self._info(res) is None:
            raise kmock.KubernetesResourceNotFoundError()
        if act == Action.WATCH:
            return await self._stream(request)
        if act == Action.LIST:
            listing = await self._serve_list(request)
            if self._wants_table(request):
                listing = kube_admission.table(listing["items"], self._columns.get(res), listing["metadata"]["resourceVersion"])
            return aiohttp.web.json_response(listing)
        if act == Action.FETCH:
            obj = await self._serve_fetch(request)
            if self._wants_table(request):
                obj = kube_admission.table([obj], self._columns.get(res), obj["metadata"]["resourceVersion"])
            return aiohttp.web.json_response(obj)
        warnings: list[str] = []
        async with self._lock:
            try:
                if act == Action.CREATE:
                    (body, warnings), code = await self._create(request), 201
                elif act == Action.UPDATE:
                    (body, warnings), code = await self._patch(request), 200
                else:
                    body, code = await self._delete_request(request), 200
            except Refused as err:
                obj = request.data if isinstance(request.data, Mapping) else {}
                info = self._info(res)
                raise kmock.KubernetesError(status=err.code, reason=err.reason, message=err.message,
                                            details=err.details(obj, res.group or "", info.kind if info else "")) from None
        return aiohttp.web.json_response(body, status=code, headers=kube_admission.warning_header(warnings))

    def _audit(self, request: kmock.Request) -> None:
        res = request.resource
        if res is None or res.plural is None:
            return  # discovery (/api, /apis, /version): every authenticated user may read it
        auth = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
        token = auth.split(" ", 1)[-1]
        method = request.method.upper()
        if method == "GET":
            watch = request.params.get("watch", "").lower() in ("true", "1")
            verb = "watch" if watch else ("get" if request.name else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if request.name else "deletecollection"}.get(method, method.lower())  # fmt: skip
        resource = f"{res.plural}/{request.subresource}" if request.subresource else res.plural
        namespace = request.namespace or ""
        self.audit.add((token, res.group or "", resource, verb, namespace))
        self.calls[res.group or "", resource, verb] += 1
        if verb == "create" and isinstance(request.data, Mapping):
            for ref in (request.data.get("metadata") or {}).get("ownerReferences") or []:
                if not ref.get("blockOwnerDeletion"):
                    continue
                group = ref.get("apiVersion", "").rpartition("/")[0]
                for declared, info in self.resources.items():
                    if (declared.group or "") == group and info.kind == ref.get("kind") and declared.plural:
                        self.audit.add((token, group, f"{declared.plural}/finalizers", "update", namespace))

    @staticmethod
    def _wants_table(request: kmock.Request) -> bool:
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
        return kube_admission.wants_table(accept)

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
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away
        return response

    @staticmethod
    def _qualified(res: Resource) -> str:
        """'jobs.batch', 'warpruns.kwarp.dev', 'pods': how the API server names a resource in messages."""
        return f"{res.plural}.{res.group}" if res.group else str(res.plural)

    async def _create(self, request: kmock.Request) -> tuple[Obj, list[str]]:
        res = request.resource
        data = request.data
        if not isinstance(data, Mapping):
            raise _status_error(400, "BadRequest", "the request body must be a JSON object")
        obj: Obj = copy.deepcopy(dict(data))
        meta = obj.setdefault("metadata", {})
        info = self._info(res)
        ns = request.namespace if info is not None and info.namespaced else None
        if info is not None and info.namespaced and ns is None:
            raise _status_error(400, "BadRequest", f"{res.plural} are namespaced: POST to /namespaces/<ns>/...")
        if meta.get("namespace") not in (None, ns):
            raise _status_error(400, "BadRequest", "metadata.namespace does not match the request's namespace")
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            raise _status_error(422, "Invalid", "metadata.name or metadata.generateName is required")
        key: Key = (res, ns, name)
        qualified = self._qualified(res)
        if self._live(key) is not None:
            raise _status_error(409, "AlreadyExists", f'{qualified} "{name}" already exists',
                                name=name, group=res.group, kind=res.plural)
        if self._has_status(res):
            obj.pop("status", None)  # a real server resets status on create when it is a subresource
        obj.setdefault("apiVersion", f"{res.group}/{res.version}" if res.group else str(res.version))
        obj.setdefault("kind", info.kind if info and info.kind else "")
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=now_rfc3339(),
            generation=1,
        )
        if ns is not None:
            meta["namespace"] = ns
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        obj, warnings = self._admit(res, obj, request)
        self._store(key, obj)
        if res == CRDS:
            self.declare_crd(obj)
        await self._emit(res, "ADDED", obj)
        return obj, warnings

    def _apply(self, request: kmock.Request, current: Obj) -> Obj:
        ctype = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        ctype = ctype.split(";")[0].strip().lower()
        data = request.data
        if ctype == "application/json-patch+json":
            if not isinstance(data, list):
                raise _status_error(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                return jsonpatch.apply_patch(copy.deepcopy(current), data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                # kopf relies on this: a failed `test` of the resourceVersion is 422, and it retries later.
                raise _status_error(422, "Invalid", f"the JSON patch cannot be applied: {err}") from None
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if ctype.startswith("application/strategic") and request.resource.group not in ("", "batch"):
                raise _status_error(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources")
            if not isinstance(data, Mapping):
                raise _status_error(400, "BadRequest", "a merge patch must be a JSON object")
            return merge_patch(current, data)
        raise _status_error(415, "UnsupportedMediaType", f"unsupported patch content type {ctype!r}")

    async def _patch(self, request: kmock.Request) -> tuple[Obj, list[str]]:
        res, ns, name = request.resource, request.namespace, request.name
        key: Key = (res, ns, name)
        current = self._live(key)
        qualified = self._qualified(res)
        if current is None:
            raise _status_error(404, "NotFound", f'{qualified} "{name}" not found', name=name, kind=res.plural)
        if request.subresource not in (None, "status"):
            raise _status_error(404, "NotFound", f"subresource {request.subresource!r} is not served")
        wanted_rv = request.data.get("metadata", {}).get("resourceVersion") if isinstance(request.data, Mapping) else None
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            raise _status_error(409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": '
                                "the object has been modified; please apply your changes to the latest version")
        patched = self._apply(request, current)
        if request.subresource == "status":
            new = copy.deepcopy(current)
            if patched.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = patched["status"]
        else:
            new = patched
            if self._has_status(res):
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for field in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion",
                          "deletionTimestamp", "deletionGracePeriodSeconds"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
                else:
                    meta.pop(field, None)
            new["apiVersion"], new["kind"] = current.get("apiVersion"), current.get("kind")
        warnings: list[str] = []
        if res == CRDS and request.subresource == "status":
            pass  # the CRD's own status is the server's; nothing to admit
        else:
            new, warnings = self._admit(res, new, request)
            if res == CRDS:
                new["status"] = current.get("status", new.get("status"))
        if new == current:
            return current, warnings  # a no-op patch: no new version, no event
        body_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if body_of(new) != body_of(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._store(key, new)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._erase(key)
        else:
            await self._emit(res, "MODIFIED", new)
            await self._release_foreground_owners(new)
        if res == CRDS:
            self.declare_crd(new)
        return new, warnings

    async def _delete_request(self, request: kmock.Request) -> Obj:
        res, ns, name = request.resource, request.namespace, request.name
        key: Key = (res, ns, name)
        current = self._live(key)
        qualified = self._qualified(res)
        if current is None:
            raise _status_error(404, "NotFound", f'{qualified} "{name}" not found', name=name, kind=res.plural)
        options = request.data if isinstance(request.data, Mapping) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy")
        if policy is None:
            orphan = options.get("orphanDependents", request.params.get("orphanDependents"))
            # The REST default of batch/v1 Jobs is to orphan their pods (kubectl asks for Background).
            policy = "Orphan" if str(orphan).lower() == "true" or (orphan is None and res == JOBS) else "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise _status_error(400, "BadRequest", f"unknown propagationPolicy {policy!r}")
        remaining = await self._delete(key, policy)
        if remaining is not None:
            return remaining
        return {
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": res.group, "kind": res.plural, "uid": current["metadata"]["uid"]},
        }

    async def _delete(self, key: Key, policy: str) -> Obj | None:
        """Delete an object; return it if finalizers hold it, None if it is gone."""
        current = self._live(key)
        if current is None:
            return None
        meta = current["metadata"]
        uid = meta["uid"]
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self._dependents.get(uid) and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        if finalizers:
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                return current
            held = copy.deepcopy(current)
            held["metadata"].update(
                finalizers=finalizers,
                deletionTimestamp=meta.get("deletionTimestamp") or now_rfc3339(),
                deletionGracePeriodSeconds=0,
                resourceVersion=self._next_rv(),
            )
            self._store(key, held)
            await self._emit(key[0], "MODIFIED", held)
            if FOREGROUND in finalizers:
                for dep in sorted(self._dependents.get(uid, ()), key=str):
                    await self._delete(dep, "Background")
                held = self._live(key)
                if held is not None:
                    await self._release_foreground(key, held)
            return self._live(key)
        if policy == "Orphan":
            for dep in sorted(self._dependents.get(uid, ()), key=str):
                dep_obj = self._live(dep)
                if dep_obj is None:
                    continue
                freed = copy.deepcopy(dep_obj)
                refs = [r for r in freed["metadata"].get("ownerReferences", []) if r.get("uid") != uid]
                if refs:
                    freed["metadata"]["ownerReferences"] = refs
                else:
                    freed["metadata"].pop("ownerReferences", None)
                freed["metadata"]["resourceVersion"] = self._next_rv()
                self._store(dep, freed)
                await self._emit(dep[0], "MODIFIED", freed)
        await self._erase(key)
        return None

    async def _erase(self, key: Key) -> None:
        """Remove an object for good, then collect its dependents (their owners are gone)."""
        current = self._live(key)
        if current is None:
            return
        final = copy.deepcopy(current)
        final["metadata"]["resourceVersion"] = self._next_rv()
        slot = self._index[key[0]][(key[1], key[2])]
        slot.history.append(final)
        slot.delete()
        self._live_index[key[0]].remove(key[1], key[2])
        self._unindex_owners(key, current)
        uid = current["metadata"]["uid"]
        self._uids.pop(uid, None)
        await self._emit(key[0], "DELETED", final)
        for dep in sorted(self._dependents.pop(uid, set()), key=str):
            dep_obj = self._live(dep)
            if dep_obj is not None and not any(u in self._uids for u in _owner_uids(dep_obj)):
                await self._delete(dep, "Background")
        await self._release_foreground_owners(current)

    async def _release_foreground_owners(self, obj: Obj) -> None:
        for uid in _owner_uids(obj):
            owner_key = self._uids.get(uid)
            owner = self._live(owner_key) if owner_key else None
            if owner is not None and owner_key is not None:
                await self._release_foreground(owner_key, owner)

    async def _release_foreground(self, key: Key, obj: Obj) -> None:
        """Foreground deletion: once no dependent is left, the foregroundDeletion finalizer goes."""
        meta = obj["metadata"]
        if FOREGROUND not in (meta.get("finalizers") or []) or not meta.get("deletionTimestamp"):
            return
        if any(self._live(d) is not None for d in self._dependents.get(meta["uid"], ())):
            return
        released = copy.deepcopy(obj)
        released["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != FOREGROUND]
        released["metadata"]["resourceVersion"] = self._next_rv()
        self._store(key, released)
        if released["metadata"]["finalizers"]:
            await self._emit(key[0], "MODIFIED", released)
        else:
            await self._erase(key)

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
                out.append(copy.deepcopy(event))
        out.reverse()
        return out

    async def _serve_fetch(self, request: kmock.Request) -> Obj:
        if self._info(request.resource) is None:
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            obj = self._live((request.resource, request.namespace, request.name))
        if obj is None:
            raise _status_error(404, "NotFound", f'{self._qualified(request.resource)} "{request.name}" not found')
        return obj

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


# ------------------------------------------------------------------------------------- Job runners


def job_status_running(start: str) -> Obj:
    return {"startTime": start, "active": 1, "ready": 1, "conditions": None, "succeeded": None, "failed": None}


def job_status_succeeded(start: str, end: str) -> Obj:
    return {
        "startTime": start, "completionTime": end, "active": None, "ready": 0, "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": end},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": end},
        ],
    }


def job_status_failed(start: str, end: str, reason: str = "BackoffLimitExceeded",
                      message: str = "Job has reached the specified backoff limit") -> Obj:
    return {
        "startTime": start, "active": None, "ready": 0, "failed": 1,
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastTransitionTime": end},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": end},
        ],
    }


def job_status_suspended(start: str | None, now: str) -> Obj:
    return {"startTime": start, "active": None, "ready": 0, "conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended",
         "lastTransitionTime": now}]}


def _finished(job: Obj) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


@dataclass
class _Tracked:
    job: Obj
    start: str | None = None
    pod: str | None = None
    finished: bool = False
    suspended: bool = False
    active_since: float | None = None  # monotonic; the Job controller restarts the deadline on resume
    # An Indexed Job: the current pod of each index, the indexes that succeeded, pods failed (counted
    # against backoffLimit; a DisruptionTarget failure is not, by the operator's podFailurePolicy).
    pods: dict[int, str] = dataclasses.field(default_factory=dict)
    completed: set[int] = dataclasses.field(default_factory=set)
    failed: int = 0


class JobRunner:
    """Stands in for the Job controller (and the kubelet): watches Jobs of a namespace, keeps their status.

    Subclasses decide what "running a Job" means. The runner creates one Pod per started Job, owned by
    the Job (so garbage collection reaches it), and writes the container's termination into it.

    It follows Jobs as an informer does: LIST, watch from the LIST's resourceVersion, and LIST again when
    the watch breaks (an error, 410 Gone) or handling an event failed (that event would otherwise be lost:
    the watch resumes after it), and every `resync_seconds` (300) as a safety net. A LIST costs the server and
    this runner work in proportion to every Job of the namespace, so it is not repeated every few seconds:
    with 9000 Jobs (benchmarks/operator.py --runs 1000) that would be most of the benchmark's cost.
    A resync keeps the watch's place; `missed_by_watch()` counts the Jobs it found that the watch then
    went past without delivering (0 when watches lose nothing).

    With `workers` > 1 (benchmarks/operator.py), events are handled on that many threads, each Job's on
    one thread (hash of its name) and under a lock of its own, as the Job controller syncs several Jobs
    at once; tests keep one thread and one lock.
    """

    resync_seconds = 300.0  # a LIST of every Job: its cost grows with the Jobs, so rarely

    def __init__(self, cluster: Cluster, namespace: str | None = None, workers: int = 1):
        self.cluster = cluster
        self.namespace = namespace or cluster.namespace
        self.batch = kubernetes.client.BatchV1Api(cluster.client())
        self.core = kubernetes.client.CoreV1Api(cluster.client())
        self.jobs: dict[str, _Tracked] = {}
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self._listed_first: dict[tuple[str, str], int] = {}  # (name, uid) a resync saw before the watch: its rv
        self._watched: set[tuple[str, str]] = set()  # (name, uid) the watch delivered
        self._watch_rv = 0  # of the last event the watch delivered
        self._deadlined: set[str] = set()  # unfinished Jobs with spec.activeDeadlineSeconds
        self.workers = workers
        self._queues: list[queue.Queue[tuple[str, Obj] | None]] = [queue.Queue() for _ in range(workers if workers > 1 else 0)]
        self.worker_threads = [threading.Thread(target=self._work_events, args=(q,), daemon=True,
                                                name=f"{type(self).__name__}-{i}") for i, q in enumerate(self._queues)]  # fmt: skip
        self._job_locks: dict[str, threading.RLock] = {}
        self._broken = threading.Event()  # a worker failed to handle an event: list again

    def __enter__(self) -> JobRunner:
        for thread in self.worker_threads:
            thread.start()
        self._thread = threading.Thread(target=self._watch, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for q in self._queues:
            q.put(None)
        for thread in self.worker_threads:
            thread.join(10)
        self.shutdown()

    def _lock_for(self, name: str) -> threading.RLock:
        if self.workers <= 1:
            return self.lock
        with self.lock:
            return self._job_locks.setdefault(name, threading.RLock())

    def _handle(self, kind: str, job: Obj) -> None:
        if not self._queues:
            self._on_event(kind, job)
        else:
            self._queues[hash(job["metadata"]["name"]) % len(self._queues)].put((kind, job))

    def _work_events(self, events: queue.Queue[tuple[str, Obj] | None]) -> None:
        while (item := events.get()) is not None:
            try:
                self._on_event(*item)
            except Exception as err:  # as in _watch: reported, and the next round lists again
                self.errors.append(err)
                self._broken.set()

    def shutdown(self) -> None:
        """Stop whatever the runner started."""

    def _watch(self) -> None:
        rv: str | None = None
        listed = 0.0
        while not self._stop.is_set():
            try:
                if self._broken.is_set():
                    self._broken.clear()
                    rv = None
                resync = rv is not None and time.monotonic() - listed > self.resync_seconds
                if rv is None or resync:
                    listed = time.monotonic()
                    listing = self.cluster.raw("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
                    if not resync:
                        self._listed_first.clear()  # the watch restarts after these: it will not deliver them
                    for job in listing["items"]:
                        key = (job["metadata"]["name"], job["metadata"]["uid"])
                        if resync and key not in self._watched:
                            self._listed_first[key] = int(job["metadata"]["resourceVersion"])
                        self._handle("ADDED", job)  # a Job seen before is only looked at again
                    if not resync:  # a resync keeps the watch's place: what it has not delivered yet still comes
                        rv = listing["metadata"]["resourceVersion"]
                stream = kubernetes.watch.Watch().stream(
                    self.batch.list_namespaced_job, self.namespace, resource_version=rv, timeout_seconds=1,
                )
                for event in stream:
                    job = event["raw_object"]
                    if event["type"] == "ERROR":
                        rv = None
                        break
                    self._watched.add((job["metadata"]["name"], job["metadata"]["uid"]))
                    self._handle(event["type"], job)
                    rv = job["metadata"]["resourceVersion"]  # after handling: a failed event is listed again
                    self._watch_rv = int(rv)
                    if self._stop.is_set():
                        break
                self.enforce_deadlines()
            except Exception as err:  # a runner must keep running; the test sees its errors
                if self._stop.is_set():
                    break
                self.errors.append(err)
                rv = None
                time.sleep(0.2)

    def missed_by_watch(self) -> int:
        """Jobs a resync LIST found that the watch has gone past without delivering (it delivers in
        resourceVersion order, so a Job listed at version v is seen by the time the watch reaches v)."""
        return sum(1 for key, listed_rv in list(self._listed_first.items())
                   if key not in self._watched and listed_rv <= self._watch_rv)

    def _on_event(self, kind: str, job: Obj) -> None:
        name = job["metadata"]["name"]
        with self._lock_for(name):
            if kind == "DELETED":
                self._deadlined.discard(name)
                tracked = self.jobs.pop(name, None)
                if tracked is not None:
                    self.on_deleted(tracked)
                return
            tracked = self.jobs.get(name)
            if tracked is None or tracked.job["metadata"]["uid"] != job["metadata"]["uid"]:
                tracked = self.jobs[name] = _Tracked(job=job)
                if _finished(job):
                    tracked.finished = True
                    self._deadlined.discard(name)
                    return
            tracked.job = job
            if tracked.finished:
                return
            if job["spec"].get("activeDeadlineSeconds") is not None:
                self._deadlined.add(name)
            else:
                self._deadlined.discard(name)
            suspend = bool(job["spec"].get("suspend"))
            if suspend and not tracked.suspended and tracked.start is not None:
                tracked.suspended = True
                self.on_suspend(tracked)
                self._patch_status(name, job_status_suspended(tracked.start, now_rfc3339()))
            elif suspend and tracked.start is None and not tracked.suspended:
                tracked.suspended = True
                self._patch_status(name, job_status_suspended(None, now_rfc3339()))
            elif not suspend and (tracked.start is None or tracked.suspended):
                # Marked started only once its pod and status are written: if either fails, the LIST that
                # follows the error starts it again.
                resumed = tracked.suspended
                start = tracked.start or now_rfc3339()
                pods: dict[int, str] = {}
                if job["spec"].get("completionMode") == "Indexed":
                    pods = {i: self._create_pod(job, i) for i in range(int(job["spec"]["completions"]))
                            if i not in tracked.completed}  # fmt: skip
                    pod = pods.get(0)
                else:
                    pod = self._create_pod(job)
                self._patch_status(name, {**job_status_running(start),
                                          **({"conditions": [{"type": "Suspended", "status": "False",
                                                              "reason": "JobResumed", "message": "Job resumed",
                                                              "lastTransitionTime": now_rfc3339()}]}
                                             if resumed else {})})
                tracked.suspended, tracked.start, tracked.active_since, tracked.pod = False, start, time.monotonic(), pod
                tracked.pods = pods
                self.on_start(tracked)
        self.enforce_deadlines()

    def enforce_deadlines(self) -> None:
        """spec.activeDeadlineSeconds as the Job controller applies it: a Job active (not suspended) longer
        than its deadline fails with reason DeadlineExceeded, its pod stopped. The deadline may be set or
        lowered on a running Job (a patch), which the next event or watch round sees (within a second)."""
        with self.lock:
            for name in sorted(self._deadlined):  # not every Job: this runs after each event
                tracked = self.jobs.get(name)
                if tracked is None or tracked.finished:
                    self._deadlined.discard(name)
                    continue
                deadline = tracked.job["spec"].get("activeDeadlineSeconds")
                if (deadline is None or tracked.suspended or tracked.active_since is None
                        or time.monotonic() - tracked.active_since < deadline):  # fmt: skip
                    continue
                self._deadlined.discard(name)
                tracked.finished = True
                self.on_deadline(tracked)
                self._finish_pod(tracked, 143, "")
                self._patch_status(name, job_status_failed(tracked.start or now_rfc3339(), now_rfc3339(),
                                                           "DeadlineExceeded",
                                                           "Job was active longer than specified deadline"))

    # -- hooks
    def on_start(self, tracked: _Tracked) -> None: ...
    def on_suspend(self, tracked: _Tracked) -> None: ...
    def on_deleted(self, tracked: _Tracked) -> None: ...
    def on_deadline(self, tracked: _Tracked) -> None: ...

    # -- status writers (what the Job controller would write)
    def _patch_status(self, name: str, status: Obj) -> None:
        try:
            self.batch.patch_namespaced_job_status(name, self.namespace, {"status": status},
                                                   _content_type="application/merge-patch+json")
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise

    def _create_pod(self, job: Obj, index: int | None = None) -> str:
        meta = job["metadata"]
        name = f"{meta['name']}-{'' if index is None else f'{index}-'}{secrets.token_hex(3)[:5]}"
        container = job["spec"]["template"]["spec"]["containers"][0]
        labels = dict(job["spec"]["template"].get("metadata", {}).get("labels", {}))
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"]})
        annotations = {}
        if index is not None:  # what the Job controller puts on an Indexed Job's pod (the label from 1.28)
            annotations[COMPLETION_INDEX_KEY] = labels[COMPLETION_INDEX_KEY] = str(index)
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations, "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"restartPolicy": "Never", "containers": [{"name": container["name"], "image": container["image"]}]},
        })
        return name

    def _finish_pod(self, tracked: _Tracked, exit_code: int, message: str = "", pod: str | None = None,
                    disrupted: bool = False) -> None:  # fmt: skip
        pod = pod or tracked.pod
        if pod is None:
            return
        reason = "Completed" if exit_code == 0 else "Error"
        container = tracked.job["spec"]["template"]["spec"]["containers"][0]["name"]
        status: Obj = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "",
                                   "imageID": "", "state": {"terminated": {
                                       "exitCode": exit_code, "reason": reason, "message": message,
                                       "finishedAt": now_rfc3339()}}}],
        }  # fmt: skip
        if disrupted:  # evicted or preempted: the condition the operator's podFailurePolicy ignores
            status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                     "message": "Eviction API: evicting", "lastTransitionTime": now_rfc3339()}]  # fmt: skip
        try:
            self.core.patch_namespaced_pod_status(pod, self.namespace, {"status": status},
                                                  _content_type="application/merge-patch+json")  # fmt: skip
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise

    # -- an Indexed Job's pods, one index at a time (what the Job controller does with backoffLimit > 0)
    def _indexed_status(self, tracked: _Tracked) -> Obj:
        spec = tracked.job["spec"]
        return {"startTime": tracked.start, "active": len(tracked.pods) or None, "ready": len(tracked.pods),
                "succeeded": len(tracked.completed) or None, "failed": tracked.failed or None,
                "completedIndexes": index_ranges(tracked.completed) or None,
                "conditions": None} if len(tracked.completed) < int(spec["completions"]) else {
                **job_status_succeeded(tracked.start or now_rfc3339(), now_rfc3339()),
                "succeeded": len(tracked.completed), "completedIndexes": index_ranges(tracked.completed)}  # fmt: skip

    def succeed_index(self, name: str, index: int) -> None:
        """The pod of `index` exits 0: the index is complete (the Job is, once every index is)."""
        with self.lock:
            tracked = self.jobs[name]
            pod = tracked.pods.pop(index)
            self._finish_pod(tracked, 0, pod=pod)
            tracked.completed.add(index)
            status = self._indexed_status(tracked)
            tracked.finished = bool(status.get("conditions"))
            self._patch_status(name, status)

    def fail_index(self, name: str, index: int, exit_code: int = 1, message: str = "", disrupted: bool = False) -> None:
        """The pod of `index` fails. Counted against backoffLimit unless disrupted; within it the index gets a
        new pod, beyond it the Job fails and its other pods are deleted (as the Job controller does)."""
        with self.lock:
            tracked = self.jobs[name]
            pod = tracked.pods.pop(index)
            self._finish_pod(tracked, exit_code, message, pod=pod, disrupted=disrupted)
            tracked.failed += 0 if disrupted else 1
            if tracked.failed > int(tracked.job["spec"].get("backoffLimit", 6)):
                tracked.finished = True
                for other in tracked.pods.values():
                    self.core.delete_namespaced_pod(other, self.namespace)
                tracked.pods = {}
                self._patch_status(name, {**job_status_failed(tracked.start or now_rfc3339(), now_rfc3339()),
                                          "failed": tracked.failed, "completedIndexes": index_ranges(tracked.completed) or None})  # fmt: skip
                return
            tracked.pods[index] = self._create_pod(tracked.job, index)
            self._patch_status(name, self._indexed_status(tracked))

    def succeed(self, name: str) -> None:
        tracked = self._finish(name)
        if tracked is not None:
            self._finish_pod(tracked, 0)
            self._patch_status(name, job_status_succeeded(tracked.start or now_rfc3339(), now_rfc3339()))

    def fail(self, name: str, exit_code: int = 1, message: str = "") -> None:
        tracked = self._finish(name)
        if tracked is not None:
            self._finish_pod(tracked, exit_code, message)
            self._patch_status(name, job_status_failed(tracked.start or now_rfc3339(), now_rfc3339()))

    def _finish(self, name: str) -> _Tracked | None:
        """Mark a Job finished, once; the caller writes its pod and status outside the lock, so Jobs that
        finish on other threads (pods running side by side) do not wait for each other."""
        with self._lock_for(name):
            tracked = self.jobs[name]
            if tracked.finished:
                return None
            tracked.finished = True
            return tracked

    def running(self) -> list[str]:
        with self.lock:
            return sorted(n for n, t in list(self.jobs.items()) if t.start and not t.finished and not t.suspended)


Outcome = Callable[[Obj], "tuple[bool, str] | None"]


class StatusJobRunner(JobRunner):
    """Integration tests' Job controller: Jobs start at once; an `outcome(job)` callback (when given)
    does the Job's work (e.g. writes its outputs into the store) and says (succeeded, message), or None
    to leave the Job running for the test to finish with `succeed(name)` / `fail(name, ...)`.
    """

    def __init__(self, cluster: Cluster, outcome: Outcome | None = None, namespace: str | None = None,
                 workers: int = 1):  # fmt: skip
        super().__init__(cluster, namespace, workers)
        self.outcome = outcome
        self.started: list[str] = []

    def on_start(self, tracked: _Tracked) -> None:
        name = tracked.job["metadata"]["name"]
        self.started.append(name)
        if self.outcome is None:
            return
        result = self.outcome(tracked.job)
        if result is None:
            return
        ok, message = result
        if ok:
            self.succeed(name)
        else:
            self.fail(name, exit_code=1, message=message)


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
    pods of a Job with a subdomain declare are one set per Job, so they reach each other (a gang's pods
    each get their own). It succeeds when every pod has, and fails at the first pod that fails (the
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
        if pod.get("subdomain"):  # a multi-node member: its pods reach each other on the ports index 0 declares
            return _Pods([self._spawn_pod(job, f"{name}-{i}", ports, log, index=i) for i in indexes])
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
                    else:
                        tail = self.logs[name].read_text(errors="replace").strip().splitlines()[-20:]
                        self.fail(name, exit_code=code, message="\n".join(tail)[-2000:])
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


COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_FIELD = f"metadata.annotations['{COMPLETION_INDEX_KEY}']"


def index_ranges(indexes: set[int]) -> str:
    """An Indexed Job's status.completedIndexes: sorted, runs written as ranges ("0,2-4")."""
    out: list[str] = []
    for i in sorted(indexes):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


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


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> Any:
    """Poll until predicate() is truthy; return its value, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {text}")
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
    """Poll fetch() until accept(value) holds; return that value."""
    box: list[Any] = []

    def ready() -> bool:
        box[:] = [fetch()]
        return bool(accept(box[0]))

    wait_for(ready, timeout, message=message)
    return box[0]
