"""What the test API server (tests/kube.py) checks and serves beyond storing objects, as a real one does.

- Admission of every create and update: built-in kinds against Kubernetes' own strict OpenAPI schemas at
  one version (the chart's kubeVersion floor, the oldest cluster kwarp supports) plus the metadata rules
  (names, labels, annotations); CustomResourceDefinitions against the apiextensions rules
  (tests/apiextensions.py); custom resources through their CRD's schema with pruning, defaulting and
  `nullable` (tests/customresource.py) under the request's fieldValidation (Strict, Warn or Ignore).
  One deliberate difference: an unknown field of a built-in kind is refused whatever fieldValidation says
  (a real server drops it under Warn, which would silently lose a setting kwarp meant to send).
- The Table format (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), so `kubectl get` shows a
  CRD's printer columns, and the OpenAPI v3 index and per-group documents kubectl reads to learn that the
  server validates fields itself (it then sends fieldValidation=Strict instead of validating client-side).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tests import apiextensions, customresource, k8s_names, k8s_openapi

Obj = dict[str, Any]
BUILTIN_VERSION = k8s_openapi.chart_floor()
# Kinds whose names are DNS labels rather than subdomains (ValidateObjectMeta's name function per kind).
DNS_LABEL_NAMES = {"Namespace", "Service"}


class Refused(Exception):
    """An admission failure: the HTTP status, reason and message the API server would answer with."""

    def __init__(self, code: int, reason: str, message: str, causes: list[str] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.causes = code, reason, message, causes or []

    def details(self, obj: Mapping[str, Any], group: str, kind: str) -> dict[str, Any]:
        return {"name": (obj.get("metadata") or {}).get("name", ""), "group": group, "kind": kind,
                "causes": [_cause(c) for c in self.causes]}


def _cause(text: str) -> dict[str, str]:
    field, _, message = text.partition(": ")
    reason = ("FieldValueRequired" if message.startswith("Required") else "FieldValueForbidden"
              if message.startswith("Forbidden") else "FieldValueNotSupported" if message.startswith("Unsupported")
              else "FieldValueInvalid")
    return {"reason": reason, "message": message or text, "field": field}


def _invalid(kind: str, group: str, name: str, causes: list[str]) -> Refused:
    qualified = f"{kind}.{group}" if group else kind
    shown = causes[0] if len(causes) == 1 else "[" + ", ".join(causes) + "]"
    return Refused(422, "Invalid", f'{qualified} "{name}" is invalid: {shown}', causes)


# ------------------------------------------------------------------------------------ built-in kinds


def builtin_errors(obj: Mapping[str, Any], namespaced: bool, version: str = BUILTIN_VERSION) -> list[str]:
    """Schema errors (strict, at `version`) and metadata errors of a built-in object."""
    try:
        errs = k8s_openapi.errors(obj, version)
    except k8s_openapi.SchemaNotFound:
        errs = []
    rule = k8s_names.dns1123_label if obj.get("kind") in DNS_LABEL_NAMES else k8s_names.dns1123_subdomain
    errs += k8s_names.object_meta(obj.get("metadata") or {}, namespaced=namespaced, name_rule=rule)
    if obj.get("kind") == "Job":
        errs += _job_errors(obj)
    return errs


def _job_errors(job: Mapping[str, Any]) -> list[str]:
    """The API server labels a Job's pods with its name (batch.kubernetes.io/job-name): a label value."""
    name = (job.get("metadata") or {}).get("name", "")
    return [f"metadata.name: Invalid value: {json.dumps(name)}: {e} (it becomes the pods' "
            "batch.kubernetes.io/job-name label)" for e in k8s_names.label_value(name)]


def admit_builtin(obj: Obj, *, kind: str, group: str, namespaced: bool, status_only: bool = False) -> None:
    """Refused if the object is invalid. `status_only`: a /status write, whose object is the stored one (valid)
    with only its status replaced: the status alone is checked, against the kind's status schema, with the
    paths and messages the whole object's check gives it (a Job's pod template, most of its schema, is not
    walked again on each status write)."""
    errs = None
    if status_only and isinstance(obj.get("status"), dict):
        try:
            errs = k8s_openapi.status_errors(obj, BUILTIN_VERSION)
        except k8s_openapi.SchemaNotFound:
            errs = []
    if errs is None:
        errs = builtin_errors(obj, namespaced)
    if errs:
        raise _invalid(kind, group, (obj.get("metadata") or {}).get("name", ""), errs)


# ------------------------------------------------------------------------------------ CRDs


def admit_crd(crd: Obj) -> Obj:
    """The CRD as stored (defaulted, with an Established status), or Refused as the API server would."""
    name = (crd.get("metadata") or {}).get("name", "")
    errs = builtin_errors(crd, namespaced=False)
    if errs:
        raise _invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, errs)
    problems = apiextensions.validate_crd(crd)
    decode = [p for p in problems if p.endswith("[decode]")]
    if decode:
        raise Refused(400, "BadRequest", "error decoding CustomResourceDefinition: " + "; ".join(decode), decode)
    if problems:
        raise _invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, problems)
    stored = apiextensions.with_defaults(crd)
    spec = stored["spec"]
    now = _now()
    stored["status"] = {
        "acceptedNames": dict(spec["names"]),
        "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
             "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    }
    return stored


# ------------------------------------------------------------------------------------ custom resources


def field_validation(params: Mapping[str, str]) -> str:
    value = params.get("fieldValidation") or "Warn"
    if value not in ("Strict", "Warn", "Ignore"):
        raise Refused(400, "BadRequest", f'fieldValidation parameter unsupported: "{value}"')
    return value


def admit_custom(obj: Obj, schema: Mapping[str, Any], *, kind: str, group: str, namespaced: bool,
                 mode: str, status_only: bool = False) -> tuple[Obj, list[str]]:
    """A custom resource as stored, and the warnings for the response; or Refused. `status_only`: a /status
    write (the stored object with only its status replaced; customresource.admit_status)."""
    name = (obj.get("metadata") or {}).get("name", "")
    try:
        if status_only and (admitted := customresource.admit_status(obj, schema, field_validation=mode)) is not None:
            return admitted
        return customresource.admit(obj, schema, namespaced=namespaced, field_validation=mode)
    except customresource.FieldValidationError as err:
        raise Refused(400, "BadRequest", str(err)) from None
    except customresource.InvalidError as err:
        raise _invalid(kind, group, name, err.causes) from None


def warning_header(warnings: Iterable[str]) -> list[tuple[str, str]]:
    return [("Warning", f'299 - {json.dumps(w)}') for w in warnings]


# ------------------------------------------------------------------------------------ Table


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name must be unique within a namespace."}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
              "description": "CreationTimestamp is a timestamp representing the server time when this object was created."}


def table(objects: list[Obj], columns: list[Mapping[str, Any]] | None, resource_version: str) -> Obj:
    """A meta.k8s.io/v1 Table: Name, then the CRD's printer columns (or Age when it declares none)."""
    columns = list(columns or [AGE_COLUMN])
    definitions = [NAME_COLUMN] + [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                                    "description": c.get("description", ""), "priority": c.get("priority", 0)}
                                   for c in columns]
    rows = [{"cells": [o["metadata"]["name"]] + [_cell(o, c) for c in columns],
             "object": {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]}}
            for o in objects]
    return {"apiVersion": "meta.k8s.io/v1", "kind": "Table", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}


def _lookup(obj: Any, json_path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", json_path):
        if part.startswith("["):
            i = int(part[1:-1])
            obj = obj[i] if isinstance(obj, list) and i < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
        if obj is None:
            return None
    return obj


def _cell(obj: Obj, column: Mapping[str, Any]) -> Any:
    value = _lookup(obj, column["jsonPath"])
    if value is None:
        return None
    if column["type"] == "date":
        return human_age(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(timestamp: str, now: datetime.datetime | None = None) -> str:
    """apimachinery's duration.HumanDuration of the time since `timestamp` ('<unknown>' if unparseable)."""
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m" if seconds % 60 == 0 else f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y" if days % 365 == 0 else f"{days // 365}y{days % 365}d"
    return f"{hours // (24 * 365)}y"


# ------------------------------------------------------------------------------------ OpenAPI v3


def _group_version_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def openapi_index(served: Iterable[tuple[str, str, str, str, bool]]) -> Obj:
    """/openapi/v3: one entry per group/version; `served` holds (group, version, plural, kind, namespaced)."""
    paths = {}
    for group, version in sorted({(g, v) for g, v, *_ in served}):
        gv = _group_version_path(group, version)
        doc = openapi_group_version(served, group, version)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}


def openapi_group_version(served: Iterable[tuple[str, str, str, str, bool]], group: str, version: str) -> Obj:
    """An OpenAPI v3 document for one group/version: each resource's PATCH operation declares the
    fieldValidation parameter (what kubectl looks for), tagged with its group-version-kind."""
    paths: dict[str, Any] = {}
    for g, v, plural, kind, namespaced in served:
        if (g, v) != (group, version):
            continue
        base = "/" + _group_version_path(g, v) + ("/namespaces/{namespace}" if namespaced else "")
        gvk = {"group": g, "version": v, "kind": kind}
        params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                  {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
        operation = {"x-kubernetes-group-version-kind": gvk, "parameters": params,
                     "responses": {"200": {"description": "OK"}}}
        paths[f"{base}/{plural}/{{name}}"] = {"patch": operation, "put": operation}
        paths[f"{base}/{plural}"] = {"post": operation}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": f"v{BUILTIN_VERSION}.0"},
            "paths": paths, "components": {"schemas": {}}}
