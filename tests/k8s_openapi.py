"""Kubernetes' own OpenAPI schemas of built-in kinds, per minor version, from the `kubernetes-validate` package.

`kubernetes_validate.validate(obj, version, strict=True)` re-reads the schema files on every call (about
50 ms an object); `validator(version, api_version, kind)` builds each (version, kind) validator once with
the same files and the same jsonschema machinery, so the emulator can check every write (well under 1 ms
an object once built). Strict schemas refuse unknown fields, as the API server's strict field validation does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate import utils as kv_utils

from tests import schema_check

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kwarp"


class SchemaNotFound(LookupError):
    """kubernetes-validate has no schema for this kind (a CRD's kind, e.g. monitoring.coreos.com)."""


def known_versions() -> list[str]:
    """Minor versions the installed kubernetes-validate carries, oldest first ('1.25', ..., '1.37')."""
    return sorted({kv_utils.major_minor(v) for v in kv_utils.all_versions()}, key=_minor)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def chart_floor() -> str:
    """The oldest minor version Chart.yaml's kubeVersion admits (">=1.26.0-0" -> '1.26')."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.match(r"^\s*>=\s*v?(\d+)\.(\d+)", constraint)
    if match is None:
        raise ValueError(f"Chart.yaml kubeVersion {constraint!r} has no '>=' floor")
    return f"{match[1]}.{match[2]}"


def chart_versions() -> list[str]:
    """Every minor version from the chart's floor to the newest kubernetes-validate knows."""
    floor = _minor(chart_floor())
    return [v for v in known_versions() if _minor(v) >= floor]


def _file_name(api_version: str, kind: str) -> str:
    # rbac.authorization.k8s.io/v1 -> rbac-v1 (the package's own naming), v1 -> v1
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return f"{kind.lower()}-{group_version}.json"


@functools.cache
def _registry(schema_dir: str) -> referencing.Registry:
    definitions = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", schema_dir)
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


@functools.cache
def validator(version: str, api_version: str, kind: str) -> jsonschema.protocols.Validator:
    full = next(v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == version)
    schema_dir = f"v{full}-local-strict"
    try:
        schema = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{_file_name(api_version, kind)}", version)
    except FileNotFoundError:
        raise SchemaNotFound(f"no schema for {kind} {api_version} in Kubernetes {version}") from None
    registry = referencing.Resource.from_contents(schema) @ _registry(schema_dir)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _valid_check(version: str, api_version: str, kind: str, part: str | None) -> schema_check.Check | None:
    """tests/schema_check.py's compiled answer to "is it valid?" for the whole object (part None) or one
    property's schema (e.g. "status"), the same answer as `validator`'s; None if it cannot be compiled."""
    check = validator(version, api_version, kind)
    schema = check.schema if part is None else (check.schema.get("properties") or {}).get(part)
    try:
        return schema_check.compile_check(schema, check._resolver)
    except schema_check.Unsupported:
        return None


def _valid(instance: Any, version: str, api_version: str, kind: str, part: str | None = None) -> bool:
    """True only when `validator` would find no error: then its walk of the object is not needed. False
    means "ask jsonschema" (invalid, or a keyword tests/schema_check.py does not implement)."""
    check = _valid_check(version, api_version, kind, part)
    if check is None:
        return False
    try:
        return check(instance)
    except schema_check.Unsupported:  # met behind a $ref on this instance's path: jsonschema decides
        return False


def errors(obj: Mapping[str, Any], version: str) -> list[str]:
    """What Kubernetes `version`'s schema finds wrong with a built-in object ([] when valid), as 'path: message'.
    A valid object is recognised by the compiled check (tests/schema_check.py); jsonschema then has nothing to
    report, and it is asked for the errors of any other.

    Raises SchemaNotFound for kinds the package does not carry."""
    check = validator(version, obj["apiVersion"], obj["kind"])
    if _valid(dict(obj), version, obj["apiVersion"], obj["kind"]):
        return []
    out = []
    for err in sorted(check.iter_errors(dict(obj)), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        out.append(f"{path}: {_best(err).message}")
    return out


def status_errors(obj: Mapping[str, Any], version: str) -> list[str] | None:
    """`errors` of an object's status alone (paths from the object's root: 'status.active: ...'), against the
    status property's schema; None when the kind's schema has no status property."""
    check = validator(version, obj["apiVersion"], obj["kind"])
    sub = (check.schema.get("properties") or {}).get("status")
    if sub is None:
        return None
    if _valid(obj["status"], version, obj["apiVersion"], obj["kind"], "status"):
        return []
    out = []
    # evolve keeps the whole schema's resolver: the status schema's $refs resolve as in the whole object's check
    for err in sorted(check.evolve(schema=sub).iter_errors(obj["status"]), key=lambda e: list(map(str, e.absolute_path))):
        out.append(".".join(["status", *(str(p) for p in err.absolute_path)]) + f": {_best(err).message}")
    return out


def _best(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """The deepest cause of an anyOf/oneOf failure (the schemas wrap most fields in one)."""
    return jsonschema.exceptions.best_match([err]) if err.context else err


__all__ = ["SchemaNotFound", "chart_floor", "chart_versions", "errors", "status_errors", "known_versions", "kubernetes_validate", "validator"]
