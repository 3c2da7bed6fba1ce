"""What the API server does to a custom resource with a structural schema, ported to Python.

On create and update the apiextensions API server, in this order: prunes the fields the schema does not
declare (reporting them under field validation Strict or Warn), drops nulls of fields that are neither
nullable nor defaulted, fills in defaults of absent fields (and of such nulls), then validates the object
against the schema (types, nullable, enum, bounds, lengths, required, list types) and its metadata.

Followed: kubernetes/apiextensions-apiserver v0.36.3 (Kubernetes 1.36.3), commit 2e78d6fca8b2:
pkg/apiserver/schema/pruning/algorithm.go (Prune), pkg/apiserver/schema/defaulting/prunenulls.go
(PruneNonNullableNullsWithoutDefaults) and algorithm.go (Default); validation is kube-openapi's
pkg/validation/validate as the CR handler runs it (a null is checked for its type, where `nullable`
admits it, and against `enum`, which never admits it). Messages follow the API server's wording.
Not ported: `format` checks (kwarp's schema declares no formats), CEL rules, validation ratcheting.

Schemas are plain dicts in the CRD's own JSON form.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from tests import k8s_names
from tests.kube_json import json_copy

Schema = Mapping[str, Any]
META_FIELDS = ("apiVersion", "kind", "metadata")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ------------------------------------------------------------------------------------ pruning


def prune(value: Any, schema: Schema | None, *, root: bool = False, path: str = "") -> list[str]:
    """Remove, in place, what the schema does not declare; return the paths removed (sorted).

    At the resource root (and at embedded resources) apiVersion, kind and metadata are kept."""
    unknown: list[str] = []
    embedded = root or bool(schema and schema.get("x-kubernetes-embedded-resource"))
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        _skip_prune(value, schema, embedded, path, unknown)
        return sorted(unknown)
    if isinstance(value, dict):
        for key in list(value):
            if embedded and key in META_FIELDS:
                continue
            props = (schema or {}).get("properties") or {}
            extra = (schema or {}).get("additionalProperties")
            if schema is not None and key in props:
                unknown += prune(value[key], props[key], path=_key(path, key))
            elif isinstance(extra, Mapping):
                unknown += prune(value[key], extra, path=_key(path, key))
            elif extra is True:
                unknown += prune(value[key], None, path=_key(path, key))
            else:
                unknown.append(_key(path, key))
                del value[key]
    elif isinstance(value, list):
        items = None if schema is None else schema.get("items")
        for i, item in enumerate(value):
            unknown += prune(item, items, path=f"{path}[{i}]")
    return sorted(unknown)


def _skip_prune(value: Any, schema: Schema, embedded: bool, path: str, unknown: list[str]) -> None:
    """x-kubernetes-preserve-unknown-fields: keep unknown fields, but prune inside the declared ones."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if embedded and key in META_FIELDS:
                continue
            if key in props:
                unknown += prune(sub, props[key], path=_key(path, key))
            elif isinstance(extra, Mapping):
                unknown += prune(sub, extra, path=_key(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            _skip_prune(item, schema["items"], False, f"{path}[{i}]", unknown)


# ------------------------------------------------------------------------------------ nulls and defaults


def _field_schema(key: str, schema: Schema | None) -> Schema | None:
    if schema is None:
        return None
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def prune_nulls(value: Any, schema: Schema | None) -> None:
    """Drop nulls of fields that are neither nullable nor defaulted (they mean 'absent')."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _field_schema(key, schema)
            if value[key] is None and sub is not None and not sub.get("nullable") and sub.get("default") is None:
                del value[key]
            else:
                prune_nulls(value[key], sub)
    elif isinstance(value, list):
        items = None if schema is None else schema.get("items")
        for item in value:
            prune_nulls(item, items)


def default(value: Any, schema: Schema | None) -> None:
    """Fill in, in place, the default of every absent field (and of a null in a non-nullable one)."""
    if schema is None:
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if sub.get("default") is None:
                continue
            if key not in value or (value[key] is None and not sub.get("nullable")):
                value[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key in value:
            if key in props:
                default(value[key], props[key])
            elif isinstance(extra, Mapping):
                if value[key] is None and not extra.get("nullable") and extra.get("default") is not None:
                    value[key] = copy.deepcopy(extra["default"])
                default(value[key], extra)
    elif isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, Mapping):
            return
        for i in range(len(value)):
            if value[i] is None and not items.get("nullable") and items.get("default") is not None:
                value[i] = copy.deepcopy(items["default"])
            default(value[i], items)


def stored_form(value: Any, schema: Schema) -> Any:
    """A copy of `value` as the API server keeps it: pruned, nulls dropped, defaults filled (not validated)."""
    out = copy.deepcopy(value)
    prune(out, schema)
    prune_nulls(out, schema)
    default(out, schema)
    return out


# ------------------------------------------------------------------------------------ validation


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: Any, wanted: str) -> bool:
    actual = _json_type(value)
    if wanted == "number":
        return actual in ("integer", "number")
    if wanted == "integer":
        # A JSON number with an integral value is an integer (1.0 decodes as one in Go's unstructured JSON).
        return actual == "integer" or (actual == "number" and math.isfinite(value) and float(value).is_integer())
    return actual == wanted


def validate(value: Any, schema: Schema, path: str = "") -> list[str]:
    """kube-openapi's schema validation of a value, with the API server's messages."""
    at = path or "<root>"
    errs: list[str] = []
    wanted = schema.get("type")
    if value is None:
        if wanted and not schema.get("nullable"):
            errs.append(f'{at}: Invalid value: "null": {at} in body must be of type {wanted}: "null"')
        if "enum" in schema:
            errs.append(f"{at}: Unsupported value: null: supported values: {_enum_text(schema['enum'])}")
        return errs
    if schema.get("x-kubernetes-int-or-string"):
        if _json_type(value) not in ("integer", "string"):
            errs.append(f'{at}: Invalid value: "{_json_type(value)}": {at} in body must be of type integer,string: '
                        f'"{_json_type(value)}"')
            return errs
    elif wanted and not _has_type(value, wanted):
        errs.append(f'{at}: Invalid value: "{_json_type(value)}": {at} in body must be of type {wanted}: '
                    f'"{_json_type(value)}"')
        return errs
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        errs.append(f"{at}: Unsupported value: {_show(value)}: supported values: {_enum_text(schema['enum'])}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        errs += _numeric(value, schema, at)
    elif isinstance(value, str):
        errs += _string(value, schema, at)
    elif isinstance(value, list):
        errs += _array(value, schema, path, at)
    elif isinstance(value, dict):
        errs += _object(value, schema, path, at)
    errs += _combinators(value, schema, path, at)
    return errs


def _same(value: Any, allowed: Any) -> bool:
    """Equal as JSON values: 1 == 1.0, but true != 1."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return isinstance(value, bool) and isinstance(allowed, bool) and value == allowed
    return value == allowed


def _enum_text(values: list[Any]) -> str:
    return ", ".join(_show(v) for v in values)


def _numeric(value: float, schema: Schema, at: str) -> list[str]:
    errs = []
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and not value > low:
            errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should be greater than {_show(low)}")
        elif not value >= low:
            errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should be greater than or equal to {_show(low)}")
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and not value < high:
            errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should be less than {_show(high)}")
        elif not value <= high:
            errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should be less than or equal to {_show(high)}")
    if schema.get("multipleOf"):
        ratio = value / schema["multipleOf"]
        if not math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-9):
            errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should be a multiple of {_show(schema['multipleOf'])}")
    return errs


def _string(value: str, schema: Schema, at: str) -> list[str]:
    errs = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should be at least {schema['minLength']} chars long")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errs.append(f"{at}: Too long: may not be more than {schema['maxLength']} bytes")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body should match '{schema['pattern']}'")
    return errs


def _array(value: list, schema: Schema, path: str, at: str) -> list[str]:
    errs = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        errs.append(f"{at}: Invalid value: {len(value)}: {at} in body should have at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errs.append(f"{at}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
    list_type = schema.get("x-kubernetes-list-type")
    if schema.get("uniqueItems") or list_type == "set":
        seen: list[str] = []
        for i, item in enumerate(value):
            if _show(item) in seen:
                errs.append(f"{path}[{i}]: Duplicate value: {_show(item)}")
            seen.append(_show(item))
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                key = _show({k: item.get(k) for k in keys})
                if key in seen:
                    errs.append(f"{path}[{i}]: Duplicate value: {key}")
                seen.append(key)
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            errs += validate(item, items, f"{path}[{i}]")
    return errs


def _object(value: dict, schema: Schema, path: str, at: str) -> list[str]:
    errs = []
    for name in schema.get("required") or []:
        if name not in value:
            errs.append(f"{_key(path, name)}: Required value")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errs.append(f"{at}: Invalid value: {len(value)}: {at} in body should have at least {schema['minProperties']} properties")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errs.append(f"{at}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, sub in value.items():
        if key in props:
            errs += validate(sub, props[key], _key(path, key))
        elif isinstance(extra, Mapping):
            errs += validate(sub, extra, _key(path, key))
    return errs


def _combinators(value: Any, schema: Schema, path: str, at: str) -> list[str]:
    errs = []
    for sub in schema.get("allOf") or []:
        errs += validate(value, sub, path)
    if schema.get("anyOf") and not any(not validate(value, sub, path) for sub in schema["anyOf"]):
        errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body must match at least one schema in anyOf")
    if schema.get("oneOf") and sum(not validate(value, sub, path) for sub in schema["oneOf"]) != 1:
        errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body must match exactly one schema in oneOf")
    if isinstance(schema.get("not"), Mapping) and not validate(value, schema["not"], path):
        errs.append(f"{at}: Invalid value: {_show(value)}: {at} in body must not match the schema in not")
    return errs


# ------------------------------------------------------------------------------------ the whole pipeline


class FieldValidationError(ValueError):
    """Unknown fields under fieldValidation=Strict: the API server answers 400 BadRequest."""

    def __init__(self, unknown: list[str]):
        self.unknown = unknown
        super().__init__("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in unknown))


class InvalidError(ValueError):
    """The object fails its schema: the API server answers 422 Invalid with these causes."""

    def __init__(self, causes: list[str]):
        self.causes = causes
        super().__init__("; ".join(causes))


def unknown_field_warnings(unknown: list[str], field_validation: str) -> list[str]:
    """What the API server does with the fields pruning found unknown: refuses the write under Strict
    (FieldValidationError), warns under Warn, says nothing under Ignore."""
    if unknown and field_validation == "Strict":
        raise FieldValidationError(unknown)
    if unknown and field_validation != "Ignore":
        return [f'unknown field "{p}"' for p in unknown]
    return []


def admit(obj: Mapping[str, Any], schema: Schema, *, namespaced: bool = True, namespace: str = "default",
          field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
    """A custom resource as the API server would store it, and the warnings it would send. A namespaced
    object without a namespace gets `namespace`, as a request to /namespaces/<namespace>/... would.

    Raises FieldValidationError (Strict and unknown fields) or InvalidError (schema or metadata)."""
    from tests.customresource_pass import compile_root_pass  # it builds on this module's walks

    def copied() -> dict[str, Any]:
        out = json_copy(dict(obj))
        if namespaced:
            out.setdefault("metadata", {}).setdefault("namespace", namespace)
        return out

    out = copied()
    # prune, prune_nulls and default in one compiled pass where the root allows (tests/test_customresource_pass.py);
    # validate runs for the messages only when the pass finds the body invalid.
    root_pass = compile_root_pass(schema)
    valid: bool | None = None
    unknown: list[str] = []
    if root_pass is not None:
        try:
            valid = root_pass(out, "", unknown)
            unknown.sort()
        except Exception:  # noqa: BLE001 - a schema the pass trips on: the four walks, failing where they fail
            out, unknown, valid = copied(), [], None
    if valid is None:
        unknown = prune(out, schema, root=True)
    warnings = unknown_field_warnings(unknown, field_validation)
    if valid is None:
        prune_nulls(out, schema)
        default(out, schema)
    body = {k: v for k, v in out.items() if k not in META_FIELDS}
    body_schema = {**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items()
                                            if k not in META_FIELDS}}
    causes = [] if valid else validate(body, body_schema)
    causes += k8s_names.object_meta(out.get("metadata") or {}, namespaced=namespaced)
    if causes:
        raise InvalidError(causes)
    return out, warnings


# Root keywords under which a /status write changes nothing the root checks: the root's other fields are
# as the last admission left them, and the status is present before and after (or the whole object is admitted).
_STATUS_ALONE_ROOT = frozenset({"type", "description", "properties", "required"})


def admit_status(obj: Mapping[str, Any], schema: Schema, *, field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]] | None:
    """`admit` for a /status write, whose object is the stored one (admitted: pruned, defaulted, valid) with
    only its status replaced: the status alone is pruned, defaulted and validated, at the paths and with the
    messages `admit` gives it, and everything else is kept. The same result without walking the spec again
    on each status write (most of the API server's work under an operator's status writes). None when the
    root schema constrains more than its fields, or the status is not an object: then `admit` decides."""
    sub = (schema.get("properties") or {}).get("status")
    status = obj.get("status")
    if sub is None or not isinstance(status, dict) or not set(schema) <= _STATUS_ALONE_ROOT:
        return None
    from tests.customresource_pass import compile_pass  # it builds on this module's walks

    out = dict(obj)  # the rest as stored; only the status is a copy of its own
    out["status"] = status = json_copy(status)
    # prune, prune_nulls and default in one compiled pass (the four walks' result, tests/test_customresource_pass.py);
    # validate runs for the messages only when the pass finds the status invalid.
    unknown: list[str] = []
    try:
        valid: bool | None = compile_pass(sub)(status, "status", unknown)
        unknown.sort()
    except Exception:  # noqa: BLE001 - a schema the pass trips on: the four walks, failing where they fail
        out["status"] = status = json_copy(obj["status"])
        unknown, valid = prune(status, sub, path="status"), None
    warnings = unknown_field_warnings(unknown, field_validation)
    if valid is None:
        prune_nulls(status, sub)
        default(status, sub)
    causes = [] if valid else validate(status, sub, "status")
    if causes:
        raise InvalidError(causes)
    return out, warnings
