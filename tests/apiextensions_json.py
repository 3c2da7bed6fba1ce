"""What the apiextensions rules (tests/apiextensions.py, tests/apiextensions_schema.py) share: JSONSchemaProps as
JSON (each keyword's Go type, decoding a request's schema), field paths and error messages written as the API
server writes them, and walking a schema's nodes. Ported from the release tests/apiextensions.py names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

Obj = Mapping[str, Any]
OPENAPI_TYPES = ("array", "boolean", "integer", "number", "object", "string")

# JSONSchemaProps keywords and the JSON type each must decode from ("schema" = a JSONSchemaProps object).
_NUMBER, _INT, _STR, _BOOL, _ANY = "number", "integer", "string", "boolean", "any"
KEYWORDS: dict[str, str] = {
    "id": _STR, "$schema": _STR, "$ref": _STR, "description": _STR, "type": _STR, "format": _STR,
    "title": _STR, "default": _ANY, "maximum": _NUMBER, "exclusiveMaximum": _BOOL, "minimum": _NUMBER,
    "exclusiveMinimum": _BOOL, "maxLength": _INT, "minLength": _INT, "pattern": _STR, "maxItems": _INT,
    "minItems": _INT, "uniqueItems": _BOOL, "multipleOf": _NUMBER, "enum": "array", "maxProperties": _INT,
    "minProperties": _INT, "required": "strings", "items": "schema-or-schemas", "allOf": "schemas",
    "oneOf": "schemas", "anyOf": "schemas", "not": "schema", "properties": "schema-map",
    "additionalProperties": "bool-or-schema", "patternProperties": "schema-map",
    "dependencies": "dependencies", "additionalItems": "bool-or-schema", "definitions": "schema-map",
    "externalDocs": "object", "example": _ANY, "nullable": _BOOL,
    "x-kubernetes-preserve-unknown-fields": _BOOL, "x-kubernetes-embedded-resource": _BOOL,
    "x-kubernetes-int-or-string": _BOOL, "x-kubernetes-list-map-keys": "strings",
    "x-kubernetes-list-type": _STR, "x-kubernetes-map-type": _STR, "x-kubernetes-validations": "validations",
}
_VALIDATION_RULE_KEYS = {"rule": _STR, "message": _STR, "messageExpression": _STR, "reason": _STR,
                         "fieldPath": _STR, "optionalOldSelf": _BOOL}


def _is(value: Any, kind: str) -> bool:
    if kind == _ANY:
        return True
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(kind)


def _go_type(kind: str) -> str:
    return {"number": "float64", "integer": "int64", "string": "string", "boolean": "bool", "array": "[]JSON",
            "strings": "[]string", "schema": "JSONSchemaProps", "schemas": "[]JSONSchemaProps",
            "schema-map": "map[string]JSONSchemaProps", "object": "ExternalDocumentation",
            "validations": "ValidationRules"}.get(kind, kind)


def _json_kind(value: Any) -> str:
    return {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}[type(value)]


# ------------------------------------------------------------------------------------ paths and errors


def child(path: str, name: str) -> str:
    return f"{path}.{name}"


def key(path: str, name: str) -> str:
    return f"{path}[{name}]"


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def required(path: str, rule: str, detail: str = "") -> str:
    return f"{path}: Required value{': ' + detail if detail else ''} [{rule}]"


def invalid(path: str, value: Any, detail: str, rule: str) -> str:
    shown = json.dumps(value, sort_keys=True) if not isinstance(value, str) else json.dumps(value)
    return f"{path}: Invalid value: {shown}: {detail} [{rule}]"


def forbidden(path: str, detail: str, rule: str) -> str:
    return f"{path}: Forbidden: {detail} [{rule}]"


def unsupported(path: str, value: Any, allowed: tuple[str, ...] | list[str], rule: str) -> str:
    return f"{path}: Unsupported value: {json.dumps(value)}: supported values: " \
           f"{', '.join(json.dumps(a) for a in allowed)} [{rule}]"


# ------------------------------------------------------------------------------------ decoding


def decode_errors(schema: Any, path: str) -> list[str]:
    """What fails to decode into apiextensions/v1 JSONSchemaProps (the API server answers 400 BadRequest), and
    keywords it does not know (dropped, or refused under fieldValidation=Strict, kubectl's default)."""
    if not isinstance(schema, dict):
        return [f"{path}: json: cannot unmarshal {_json_kind(schema)} into Go value of type JSONSchemaProps [decode]"]
    errs: list[str] = []
    for name, value in schema.items():
        kind = KEYWORDS.get(name)
        at = child(path, name)
        if kind is None:
            errs.append(f'{at}: strict decoding error: unknown field "{name}" [decode]')
            continue
        if name == "default" or name == "example":
            continue
        if kind == "schema":
            errs += decode_errors(value, at)
        elif kind == "schemas":
            errs += _decode_list(value, at, kind)
        elif kind == "schema-or-schemas":
            errs += _decode_list(value, at, kind) if isinstance(value, list) else decode_errors(value, at)
        elif kind == "schema-map" or kind == "dependencies":
            if not isinstance(value, dict):
                errs.append(_cannot(at, value, kind))
                continue
            for sub_name, sub in value.items():
                if kind == "dependencies" and isinstance(sub, list):
                    if not all(isinstance(s, str) for s in sub):
                        errs.append(_cannot(key(at, sub_name), sub, "strings"))
                else:
                    errs += decode_errors(sub, key(at, sub_name))
        elif kind == "bool-or-schema":
            if not isinstance(value, bool):
                errs += decode_errors(value, at)
        elif kind == "strings":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                errs.append(_cannot(at, value, kind))
        elif kind == "validations":
            errs += _decode_validations(value, at)
        elif not _is(value, kind):
            errs.append(_cannot(at, value, kind))
    return errs


def _cannot(path: str, value: Any, kind: str) -> str:
    return (f"{path}: json: cannot unmarshal {_json_kind(value)} into Go struct field of type {_go_type(kind)} "
            f"[decode]")


def _decode_list(value: Any, path: str, kind: str) -> list[str]:
    if not isinstance(value, list):
        return [_cannot(path, value, kind)]
    errs: list[str] = []
    for i, sub in enumerate(value):
        errs += decode_errors(sub, index(path, i))
    return errs


def _decode_validations(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        return [_cannot(path, value, "validations")]
    errs = []
    for i, rule in enumerate(value):
        if not isinstance(rule, dict):
            errs.append(_cannot(index(path, i), rule, "object"))
            continue
        for name, v in rule.items():
            kind = _VALIDATION_RULE_KEYS.get(name)
            if kind is None:
                errs.append(f'{child(index(path, i), name)}: strict decoding error: unknown field "{name}" [decode]')
            elif not _is(v, kind):
                errs.append(_cannot(child(index(path, i), name), v, kind))
    return errs


# ------------------------------------------------------------------------------------ schema walking


def walk(schema: Obj) -> Iterator[Obj]:
    """Every schema node, depth first (SchemaHas)."""
    yield schema
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield from walk(items)
    elif isinstance(items, list):
        for s in items:
            yield from walk(s)
    for name in ("allOf", "anyOf", "oneOf"):
        for s in schema.get(name) or []:
            yield from walk(s)
    for name in ("not",):
        if isinstance(schema.get(name), Mapping):
            yield from walk(schema[name])
    for name in ("properties", "patternProperties", "definitions"):
        for s in (schema.get(name) or {}).values():
            yield from walk(s)
    for name in ("additionalProperties", "additionalItems"):
        if isinstance(schema.get(name), Mapping):
            yield from walk(schema[name])
    for s in (schema.get("dependencies") or {}).values():
        if isinstance(s, Mapping):
            yield from walk(s)


def _has_defaults(schema: Obj) -> bool:
    return any(s.get("default") is not None for s in walk(schema))
