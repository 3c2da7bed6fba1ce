"""A Kubernetes API server for tests: kmock's emulator with what a real API server does on writes.

`ApiServer` subclasses kmock's `KubernetesEmulator` (a real HTTP server that kopf and the `kubernetes`
client talk to), through tests/kube_store.py's `ObjectStore` (indexes, watch journal, list/get/watch),
and adds what a real API server does and the emulator leaves out, so that the operator is tested
against Kubernetes semantics rather than the emulator's shortcuts:

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
- deletion: finalizers hold an object (deletionTimestamp set) until they are removed; owner-reference
  garbage collection cascades to dependents (Background), waits for them (Foreground, through the
  `foregroundDeletion` finalizer) or orphans them (Orphan, the REST default for batch/v1 Jobs).

kmock 0.8 matches each request against every request it recorded (quadratic over an operator's
thousands), so this server keeps a short log of them and serves the object API itself, leaving only
discovery to kmock's reactions (tests/kube_store.py serves the reads). It also parses
/api/v1/namespaces[/<name>] (kmock reads "namespaces" there as a namespace prefix), since kopf lists and
watches Namespaces and CRDs.
"""

from __future__ import annotations

import collections
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal.enums import action as Action
from kmock._internal.references import resource as Resource

from tests import kube_admission
from tests.kube_admission import Refused
from tests.kube_json import json_copy
from tests.kube_store import Key, Obj, ObjectStore, _owner_uids, _status_error, now_rfc3339, resource_key

JOBS = "batch/v1/jobs"
PODS = "v1/pods"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?$")
FOREGROUND = "foregroundDeletion"
# The same as resource_key(res): compared as tuples, not through kmock's resource equality (see resource_key).
JOBS_KEY, CRDS_KEY = resource_key(Resource(JOBS)), resource_key(Resource(CRDS))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return json_copy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# ------------------------------------------------------------------------------------- the server


@attrs.define(kw_only=True)
class ApiServer(ObjectStore):
    """kmock's emulator with the server-side behaviours of a real API server (see the module docstring).

    Writes (create, patch, delete) are served here, not by kmock's fallbacks; reads (list, watch, get)
    are ObjectStore's (tests/kube_store.py), from indexes kept beside kmock's object store, which stays
    the one source of truth (`.objects`).
    """

    requests_kept: int = 100  # of kmock's request log
    _schemas: dict[tuple[str | None, str | None, str | None], Obj] = attrs.field(factory=dict, init=False)  # by resource_key
    # (bearer token, apiGroup, resource[/subresource], RBAC verb, namespace) of every request to the object API,
    # and the implicit `update <owner>/finalizers` a blockOwnerDeletion owner reference asks for (the
    # OwnerReferencesPermissionEnforcement admission check): what an authorizer would be asked.
    audit: set[tuple[str, str, str, str, str]] = attrs.field(factory=set, init=False)  # ..., namespace
    # Requests to the object API by (apiGroup, resource[/subresource], verb): how often each call is made.
    calls: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    # The same by bearer token first: one client's calls (the operator's, given a token of its own).
    calls_by: collections.Counter[tuple[str, str, str, str]] = attrs.field(factory=collections.Counter, init=False)

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
                self._schemas[resource_key(Resource(resource))] = version["schema"]["openAPIV3Schema"]
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

    def _admit(self, res: Resource, obj: Obj, request: kmock.Request, *, status_only: bool = False) -> tuple[Obj, list[str]]:
        """The object as stored and the response's warnings, or Refused (see tests/kube_admission.py).
        `status_only`: a /status write (the stored object, admitted when stored, with only its status
        replaced): its status alone is admitted."""
        info = self._info(res)
        kind = info.kind if info is not None and info.kind else str(res.plural)
        namespaced = bool(info.namespaced) if info is not None else True
        group = res.group or ""
        if resource_key(res) == CRDS_KEY:
            return kube_admission.admit_crd(obj), []
        schema = self._schemas.get(resource_key(res))
        if schema is not None:
            mode = kube_admission.field_validation(request.params)
            return kube_admission.admit_custom(obj, schema, kind=kind, group=group, namespaced=namespaced, mode=mode,
                                               status_only=status_only)  # fmt: skip
        kube_admission.admit_builtin(obj, kind=kind, group=group, namespaced=namespaced, status_only=status_only)
        return obj, []

    def _served(self) -> list[tuple[str, str, str, str, bool]]:
        return [(r.group or "", str(r.version), str(r.plural), i.kind or "", bool(i.namespaced))
                for r, i in self.resources.items() if r.plural and r.version]

    def _has_status(self, res: Resource) -> bool:
        info = self._info(res)
        return info is not None and "status" in info.subresources

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
        return self._answer(body, code, kube_admission.warning_header(warnings))

    def _answer(self, body: Obj, status: int, headers: list[tuple[str, str]]) -> aiohttp.web.Response:
        """aiohttp.web.json_response(body, ...); when `body` is the object just emitted (a create or a patch
        that changed something: it is not changed after), its event's JSON of it, not a second encoding."""
        last = self._last_emitted
        if last is not None and last[0] is body:
            return aiohttp.web.Response(text=last[1].object_json, status=status, headers=headers,
                                        content_type="application/json")
        return aiohttp.web.json_response(body, status=status, headers=headers)

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
        self.calls_by[token, res.group or "", resource, verb] += 1
        if verb == "create" and isinstance(request.data, Mapping):
            for ref in (request.data.get("metadata") or {}).get("ownerReferences") or []:
                if not ref.get("blockOwnerDeletion"):
                    continue
                group = ref.get("apiVersion", "").rpartition("/")[0]
                for declared, info in self.resources.items():
                    if (declared.group or "") == group and info.kind == ref.get("kind") and declared.plural:
                        self.audit.add((token, group, f"{declared.plural}/finalizers", "update", namespace))

    async def _create(self, request: kmock.Request) -> tuple[Obj, list[str]]:
        res = request.resource
        data = request.data
        if not isinstance(data, Mapping):
            raise _status_error(400, "BadRequest", "the request body must be a JSON object")
        obj: Obj = json_copy(dict(data))
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
        if resource_key(res) == CRDS_KEY:
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
                return jsonpatch.apply_patch(json_copy(current), data, in_place=False)
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
        res, name = request.resource, request.name
        key, current = self._existing(request)
        qualified = self._qualified(res)
        if request.subresource not in (None, "status"):
            raise _status_error(404, "NotFound", f"subresource {request.subresource!r} is not served")
        wanted_rv = request.data.get("metadata", {}).get("resourceVersion") if isinstance(request.data, Mapping) else None
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            raise _status_error(409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": '
                                "the object has been modified; please apply your changes to the latest version")
        patched = self._apply(request, current)
        if request.subresource == "status":
            new = json_copy(current)
            if patched.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = patched["status"]
        else:
            new = patched
            if self._has_status(res):
                if "status" in current:
                    new["status"] = json_copy(current["status"])
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
        is_crd = resource_key(res) == CRDS_KEY
        if is_crd and request.subresource == "status":
            pass  # the CRD's own status is the server's; nothing to admit
        else:
            new, warnings = self._admit(res, new, request, status_only=request.subresource == "status")
            if is_crd:
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
        if is_crd:
            self.declare_crd(new)
        return new, warnings

    async def _delete_request(self, request: kmock.Request) -> Obj:
        res, name = request.resource, request.name
        key, current = self._existing(request)
        options = request.data if isinstance(request.data, Mapping) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy")
        if policy is None:
            orphan = options.get("orphanDependents", request.params.get("orphanDependents"))
            # The REST default of batch/v1 Jobs is to orphan their pods (kubectl asks for Background).
            policy = "Orphan" if str(orphan).lower() == "true" or (orphan is None and resource_key(res) == JOBS_KEY) else "Background"
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
            held = json_copy(current)
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
                freed = json_copy(dep_obj)
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
        final = json_copy(current)
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
        released = json_copy(obj)
        released["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != FOREGROUND]
        released["metadata"]["resourceVersion"] = self._next_rv()
        self._store(key, released)
        if released["metadata"]["finalizers"]:
            await self._emit(key[0], "MODIFIED", released)
        else:
            await self._erase(key)
