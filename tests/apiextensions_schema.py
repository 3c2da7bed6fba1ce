"""A CRD version's openAPIV3Schema as the API server validates it (tests/apiextensions.py validates the rest of
the CRD): decodable, the OpenAPI rules of ValidateCustomResourceDefinitionOpenAPISchema with
specStandardValidatorV3, list and map types, the static shape of x-kubernetes-validations, structural
(NewStructural, ValidateStructural, complete.go), and defaults pruned and valid (ValidateDefaults).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from tests import customresource
from tests.apiextensions_json import (
    OPENAPI_TYPES,
    Obj,
    child,
    decode_errors,
    forbidden,
    index,
    invalid,
    key,
    required,
    unsupported,
)

ROOT_FIELDS_WITH_STATUS = (
    "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "required",
    "items", "properties", "externalDocs", "example", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)
VALIDATION_REASONS = ("FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired")


def validate_schema(schema: Any, at: str, *, status_subresource: bool = False) -> list[str]:
    """A version's openAPIV3Schema: decodable, the OpenAPI rules, structural, and defaults pruned and valid."""
    errs = decode_errors(schema, at)
    if errs:
        return errs  # the request would not even decode: nothing else is checked
    if status_subresource:
        if schema.get("type") not in (None, "object"):
            errs.append(invalid(child(at, "type"), schema.get("type"), 'only "object" is allowed as the type at '
                                "the root of the schema if the status subresource is enabled", "R-root-status"))
        extra = sorted(k for k, v in schema.items() if k not in ROOT_FIELDS_WITH_STATUS and v not in (None, False, "", [], {}))
        if extra:
            errs.append(invalid(at, extra, "only description, type, format, title, maximum, ... (the value "
                                "validations), required, items, properties, externalDocs, example, "
                                "x-kubernetes-preserve-unknown-fields and x-kubernetes-validations are allowed at "
                                "the root of the schema if the status subresource is enabled", "R-root-status"))
    if schema.get("nullable"):
        errs.append(forbidden(child(at, "nullable"), "nullable cannot be true at the root", "R-root-nullable"))
    openapi = _openapi(schema, at, root=True, meta=False, defaults_ok=True, forbid_reason="")
    structural = _structural(schema, at, "root")
    errs += openapi
    errs += structural
    if not openapi and not structural:
        errs += _defaults(schema, at)
    return errs


def _openapi(s: Obj, at: str, *, root: bool, meta: bool, defaults_ok: bool, forbid_reason: str) -> list[str]:
    """ValidateCustomResourceDefinitionOpenAPISchema with specStandardValidatorV3, for one node and below."""
    errs: list[str] = []
    stype = s.get("type")
    if stype and stype not in OPENAPI_TYPES and stype != "null":
        errs.append(unsupported(child(at, "type"), stype, OPENAPI_TYPES, "R-type"))
    if stype == "null":
        errs.append(forbidden(child(at, "type"), "type cannot be set to null, use nullable as an alternative", "R-type"))
    if s.get("default") is not None and not defaults_ok:
        errs.append(forbidden(child(at, "default"), "must not be set" + (" " + forbid_reason if forbid_reason else ""),
                              "R-default-forbidden"))
    for name, label in (("id", "id"), ("additionalItems", "additionalItems"), ("patternProperties", "patternProperties"),
                        ("definitions", "definitions"), ("dependencies", "dependencies"), ("$ref", "$ref")):
        if s.get(name) not in (None, {}, ""):
            errs.append(forbidden(child(at, label), f"{label} is not supported", "R-unsupported-keyword"))
    if isinstance(s.get("items"), list) and s["items"]:
        errs.append(forbidden(child(at, "items"), "items must be a schema object and not an array", "R-items-array"))
    if meta and s.get("x-kubernetes-embedded-resource"):
        errs.append(forbidden(child(at, "x-kubernetes-embedded-resource"), "must not be used inside of resource meta",
                              "R-embedded-in-meta"))
    if s.get("uniqueItems"):
        errs.append(forbidden(child(at, "uniqueItems"), "uniqueItems cannot be set to true since the runtime "
                              "complexity becomes quadratic", "R-unique-items"))
    extra = s.get("additionalProperties")
    # additionalProperties: true beside properties is tolerated (it allows what pruning removes anyway).
    if s.get("properties") and (extra is False or isinstance(extra, Mapping)):
        errs.append(forbidden(child(at, "additionalProperties"), "additionalProperties and properties are mutual "
                              "exclusive", "R-additional-properties"))
    if isinstance(extra, Mapping):
        sub_ok, reason = (False, "inside additionalProperties applying to object metadata") if meta else (defaults_ok, forbid_reason)
        errs += _openapi(extra, child(at, "additionalProperties"), root=False, meta=meta, defaults_ok=sub_ok,
                         forbid_reason=reason)
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    for name, prop in (s.get("properties") or {}).items():
        sub_meta, sub_ok, reason = meta, defaults_ok, forbid_reason
        if (root or embedded) and name in customresource.META_FIELDS:
            sub_meta = True
            if root:
                sub_ok, reason = False, f"in top-level {name}"
        errs += _openapi(prop, key(child(at, "properties"), name), root=False, meta=sub_meta, defaults_ok=sub_ok,
                         forbid_reason=reason)
    for name in ("allOf", "oneOf", "anyOf"):
        for i, sub in enumerate(s.get(name) or []):
            errs += _openapi(sub, index(child(at, name), i), root=False, meta=meta, defaults_ok=defaults_ok,
                             forbid_reason=forbid_reason)
    if isinstance(s.get("not"), Mapping):
        errs += _openapi(s["not"], child(at, "not"), root=False, meta=meta, defaults_ok=defaults_ok,
                         forbid_reason=forbid_reason)
    if isinstance(s.get("items"), Mapping):
        errs += _openapi(s["items"], child(at, "items"), root=False, meta=meta, defaults_ok=defaults_ok,
                         forbid_reason=forbid_reason)
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        errs.append(invalid(child(at, "x-kubernetes-preserve-unknown-fields"), False, "must be true or undefined",
                            "R-preserve-unknown-false"))
    errs += _map_and_list_types(s, at)
    errs += _validation_rules(s, at)
    return errs


def _map_and_list_types(s: Obj, at: str) -> list[str]:
    errs: list[str] = []
    stype, map_type, list_type = s.get("type"), s.get("x-kubernetes-map-type"), s.get("x-kubernetes-list-type")
    keys = s.get("x-kubernetes-list-map-keys") or []
    items = s.get("items") if isinstance(s.get("items"), Mapping) else None
    if map_type is not None and stype != "object":
        errs.append(required(child(at, "type"), "R-map-type", "must be object if x-kubernetes-map-type is specified")
                    if not stype else invalid(child(at, "type"), stype, "must be object if x-kubernetes-map-type is "
                                              "specified", "R-map-type"))
    if map_type is not None and map_type not in ("atomic", "granular"):
        errs.append(unsupported(child(at, "x-kubernetes-map-type"), map_type, ("atomic", "granular"), "R-map-type"))
    if list_type is not None and stype != "array":
        errs.append(required(child(at, "type"), "R-list-type", "must be array if x-kubernetes-list-type is specified")
                    if not stype else invalid(child(at, "type"), stype, "must be array if x-kubernetes-list-type is "
                                              "specified", "R-list-type"))
    elif list_type == "set" and items is not None:
        if items.get("type") == "array" and items.get("x-kubernetes-list-type") not in (None, "atomic"):
            errs.append(invalid(child(at, "items.x-kubernetes-list-type"), items.get("x-kubernetes-list-type"),
                                "must be atomic as item of a list with x-kubernetes-list-type=set", "R-list-type"))
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            errs.append(invalid(child(at, "items.x-kubernetes-map-type"), items.get("x-kubernetes-map-type"),
                                "must be atomic as item of a list with x-kubernetes-list-type=set", "R-list-type"))
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        errs.append(unsupported(child(at, "x-kubernetes-list-type"), list_type, ("atomic", "set", "map"), "R-list-type"))
    if keys and list_type != "map":
        errs.append(required(child(at, "x-kubernetes-list-type"), "R-list-map-keys",
                             "must be map if x-kubernetes-list-map-keys is non-empty") if list_type is None else
                    invalid(child(at, "x-kubernetes-list-type"), list_type,
                            "must be map if x-kubernetes-list-map-keys is non-empty", "R-list-map-keys"))
    if list_type == "map":
        if not keys:
            errs.append(required(child(at, "x-kubernetes-list-map-keys"), "R-list-map-keys",
                                 "must not be empty if x-kubernetes-list-type is map"))
        if items is None:
            errs.append(required(child(at, "items"), "R-list-map-keys", "must have a schema if x-kubernetes-list-type is map"))
        elif items.get("type") != "object":
            errs.append(invalid(child(at, "items.type"), items.get("type"), "must be object if parent array's "
                                "x-kubernetes-list-type is map", "R-list-map-keys"))
        else:
            props = items.get("properties") or {}
            for k in keys:
                if k not in props:
                    errs.append(invalid(child(at, "x-kubernetes-list-map-keys"), keys,
                                        "entries must all be names of item properties", "R-list-map-keys"))
                elif props[k].get("type") in ("array", "object"):
                    errs.append(invalid(child(key(child(at, "items.properties"), k), "type"), props[k].get("type"),
                                        "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                        "R-list-map-keys"))
            if len(set(keys)) != len(keys):
                errs.append(invalid(child(at, "x-kubernetes-list-map-keys"), keys, "must not contain duplicate entries",
                                    "R-list-map-keys"))
    if list_type in ("set", "map") and items is not None:
        if items.get("nullable"):
            errs.append(forbidden(child(at, "items.nullable"), f"cannot be nullable when x-kubernetes-list-type is "
                                  f"{list_type}", "R-map-set-items"))
        if list_type == "map":
            required_keys = set(items.get("required") or [])
            for k in keys:
                prop = (items.get("properties") or {}).get(k)
                if prop is None:
                    continue
                if k not in required_keys and prop.get("default") is None:
                    errs.append(required(child(key(child(at, "items.properties"), k), "default"), "R-map-set-items",
                                         "this property is in x-kubernetes-list-map-keys, so it must have a default "
                                         "or be a required property"))
                if prop.get("nullable"):
                    errs.append(forbidden(child(key(child(at, "items.properties"), k), "nullable"),
                                          "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
                                          "R-map-set-items"))
    return errs


def _validation_rules(s: Obj, at: str) -> list[str]:
    errs = []
    for i, rule in enumerate(s.get("x-kubernetes-validations") or []):
        path = index(child(at, "x-kubernetes-validations"), i)
        text, message = (rule.get("rule") or "").strip(), rule.get("message") or ""
        if not text:
            errs.append(required(child(path, "rule"), "R-validation-rule", "rule is not specified"))
        elif message and not message.strip():
            errs.append(invalid(child(path, "message"), message, "must be non-empty if specified", "R-validation-rule"))
        elif re.search(r"[\n\r]", message.strip()):
            errs.append(invalid(child(path, "message"), message, "must not contain line breaks", "R-validation-rule"))
        elif re.search(r"[\n\r]", text) and not message.strip():
            errs.append(required(child(path, "message"), "R-validation-rule",
                                 "message must be specified if rule contains line breaks"))
        expression = rule.get("messageExpression")
        if expression is not None and expression and not expression.strip():
            errs.append(required(child(path, "messageExpression"), "R-validation-rule",
                                 "messageExpression must be non-empty if specified"))
        if rule.get("reason") is not None and rule["reason"] not in VALIDATION_REASONS:
            errs.append(unsupported(child(path, "reason"), rule["reason"], VALIDATION_REASONS, "R-validation-rule"))
        field_path = rule.get("fieldPath")
        if field_path:
            if not field_path.strip():
                errs.append(invalid(child(path, "fieldPath"), field_path, "must be non-empty if specified", "R-validation-rule"))
            if re.search(r"[\n\r]", field_path):
                errs.append(invalid(child(path, "fieldPath"), field_path, "must not contain line breaks", "R-validation-rule"))
    return errs


# ------------------------------------------------------------------------------------ structural


_VALUE_VALIDATION_FORBIDDEN = {
    "type": "must be empty to be structural", "default": "must be undefined to be structural",
    "title": "must be empty to be structural", "description": "must be empty to be structural",
    "nullable": "must be false to be structural",
    "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
    "x-kubernetes-embedded-resource": "must be false to be structural",
    "x-kubernetes-int-or-string": "must be false to be structural",
    "x-kubernetes-list-map-keys": "must be empty to be structural",
    "x-kubernetes-list-type": "must be undefined to be structural",
    "x-kubernetes-map-type": "must be undefined to be structural",
    "x-kubernetes-validations": "must be empty to be structural",
}
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _structural(s: Obj, at: str, level: str) -> list[str]:
    """ValidateStructural: the invariants of a structural schema at one node (root, items or field) and below."""
    errs: list[str] = []
    stype = s.get("type")
    items = s.get("items") if isinstance(s.get("items"), Mapping) else None
    if stype == "array" and items is None:
        errs.append(required(child(at, "items"), "R-structural-array-items", "must be specified"))
    if items is not None:
        errs += _structural(items, child(at, "items"), "items")
    for name, prop in (s.get("properties") or {}).items():
        errs += _structural(prop, key(child(at, "properties"), name), "field")
    extra = s.get("additionalProperties")
    if extra is not None and extra is not False:
        if level == "root":
            errs.append(forbidden(child(at, "additionalProperties"), "must not be used at the root",
                                  "R-structural-additional-properties"))
        if isinstance(extra, Mapping):
            errs += _structural(extra, child(at, "additionalProperties"), "field")
    int_or_string = bool(s.get("x-kubernetes-int-or-string"))
    preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        errs.append(invalid(child(at, "x-kubernetes-preserve-unknown-fields"), True,
                            "must be false if x-kubernetes-int-or-string is true", "R-structural-int-or-string"))
    if int_or_string and embedded:
        errs.append(invalid(child(at, "x-kubernetes-embedded-resource"), True,
                            "must be false if x-kubernetes-int-or-string is true", "R-structural-int-or-string"))
    errs += _value_validations(s, at, level)
    if embedded and stype != "object":
        errs.append(required(child(at, "type"), "R-structural-type", "must be object if x-kubernetes-embedded-resource "
                             "is true") if not stype else invalid(child(at, "type"), stype, "must be object if "
                             "x-kubernetes-embedded-resource is true", "R-structural-type"))
    elif not stype and not int_or_string and not preserve:
        where = {"root": "at the root", "items": "for specified array items",
                 "field": "for specified object fields"}[level]
        errs.append(required(child(at, "type"), "R-structural-type", f"must not be empty {where}"))
    if embedded and extra is not None and extra is not False:
        errs.append(forbidden(child(at, "additionalProperties"), "must not be used if x-kubernetes-embedded-resource "
                              "is set", "R-structural-embedded"))
    if level == "root" and stype and stype != "object":
        errs.append(invalid(child(at, "type"), stype, "must be object at the root", "R-structural-root-object"))
    check_meta = level == "root" or embedded
    props = s.get("properties") or {}
    for name in ("kind", "apiVersion"):
        if check_meta and name in props and props[name].get("type") != "string":
            errs.append(invalid(child(key(child(at, "properties"), name), "type"), props[name].get("type"),
                                "must be string", "R-structural-type-meta"))
    if "metadata" in props:
        errs += _structural_metadata(props["metadata"], check_meta, level, key(child(at, "properties"), "metadata"))
    if embedded and not preserve and not props:
        errs.append(required(child(at, "properties"), "R-structural-embedded", "must not be empty if "
                             "x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields"))
    if level == "root":
        errs += _completeness(s, at)
    return errs


def _structural_metadata(m: Obj, check: bool, level: str, at: str) -> list[str]:
    errs = []
    if check and m.get("type") != "object":
        errs.append(invalid(child(at, "type"), m.get("type"), "must be object", "R-structural-metadata"))
    if level == "root":
        rest = {k: v for k, v in m.items() if k not in ("type", "default") and v not in (None, False, "", [], {})}
        props = set(rest.pop("properties", None) or {})
        if rest or not props <= {"name", "generateName"}:
            errs.append(forbidden(at, "must not specify anything other than name and generateName, but metadata is "
                                  "implicitly specified", "R-structural-metadata"))
    return errs


def _value_validations(s: Obj, at: str, level: str) -> list[str]:
    errs = []
    skip_any_of = s.get("anyOf") == _INT_OR_STRING
    all_of = s.get("allOf") or []
    skip_first_all_of_any_of = bool(all_of) and all_of[0].get("anyOf") == _INT_OR_STRING
    if not skip_any_of:
        for i, sub in enumerate(s.get("anyOf") or []):
            errs += _nested_value_validation(sub, index(child(at, "anyOf"), i), level, skip_any_of=False)
    for i, sub in enumerate(all_of):
        errs += _nested_value_validation(sub, index(child(at, "allOf"), i), level,
                                         skip_any_of=skip_first_all_of_any_of and i == 0)
    for i, sub in enumerate(s.get("oneOf") or []):
        errs += _nested_value_validation(sub, index(child(at, "oneOf"), i), level, skip_any_of=False)
    if isinstance(s.get("not"), Mapping):
        errs += _nested_value_validation(s["not"], child(at, "not"), level, skip_any_of=False)
    if s.get("pattern"):
        try:
            re.compile(s["pattern"])
        except re.error as err:
            errs.append(invalid(child(at, "pattern"), s["pattern"], f"must be a valid regular expression, but isn't: "
                                f"{err}", "R-structural-pattern"))
    return errs


def _nested_value_validation(v: Obj, at: str, level: str, *, skip_any_of: bool) -> list[str]:
    errs = []
    inner = dict(v)
    if skip_any_of:
        inner.pop("anyOf", None)
    errs += _value_validations(inner, at, level)
    if isinstance(v.get("items"), Mapping):
        errs += _nested_value_validation(v["items"], child(at, "items"), level, skip_any_of=False)
    for name, prop in (v.get("properties") or {}).items():
        errs += _nested_value_validation(prop, key(child(at, "properties"), name), "field", skip_any_of=False)
    for name, detail in _VALUE_VALIDATION_FORBIDDEN.items():
        if v.get(name) not in (None, False, "", [], {}):
            errs.append(forbidden(child(at, name), detail, "R-structural-value-validation"))
    if v.get("additionalProperties") is not None:
        errs.append(forbidden(child(at, "additionalProperties"), "must be undefined to be structural",
                              "R-structural-value-validation"))
    if "metadata" in (v.get("properties") or {}):
        errs.append(forbidden(key(child(at, "properties"), "metadata"), "must not be specified in a nested "
                              "context", "R-structural-value-validation"))
    return errs


def _completeness(s: Obj, at: str) -> list[str]:
    """Every property a value validation (allOf/anyOf/oneOf/not) names is declared by the structural part."""
    errs: list[str] = []

    def nested(v: Obj, node: Obj | None, s_path: str, v_path: str) -> None:
        if node is None:
            errs.append(required(s_path, "R-structural-complete", f"because it is defined in {v_path}"))
            return
        value_validations(v, node, s_path, v_path)
        if isinstance(v.get("items"), Mapping):
            items = node.get("items") if isinstance(node.get("items"), Mapping) else None
            nested(v["items"], items, child(s_path, "items"), child(v_path, "items"))
        for name, sub in (v.get("properties") or {}).items():
            nested(sub, (node.get("properties") or {}).get(name), key(child(s_path, "properties"), name),
                   key(child(v_path, "properties"), name))

    def value_validations(v: Obj, node: Obj, s_path: str, v_path: str) -> None:
        if isinstance(v.get("not"), Mapping):
            nested(v["not"], node, s_path, child(v_path, "not"))
        for name in ("allOf", "anyOf", "oneOf"):
            for i, sub in enumerate(v.get(name) or []):
                nested(sub, node, s_path, index(child(v_path, name), i))

    def visit(node: Obj, path: str) -> None:
        value_validations(node, node, path, path)
        if isinstance(node.get("items"), Mapping):
            visit(node["items"], child(path, "items"))
        for name, sub in (node.get("properties") or {}).items():
            visit(sub, key(child(path, "properties"), name))
        if isinstance(node.get("additionalProperties"), Mapping):
            visit(node["additionalProperties"], child(path, "additionalProperties"))

    visit(s, at)
    return errs


# ------------------------------------------------------------------------------------ defaults


def _defaults(schema: Obj, at: str) -> list[str]:
    """ValidateDefaults: every default is already pruned (no unknown fields) and valid against its own schema."""
    errs: list[str] = []

    def visit(node: Obj, path: str, meta: bool) -> None:
        value = node.get("default")
        if value is not None and not meta:
            pruned = copy.deepcopy(value)
            customresource.prune(pruned, node, root=bool(node.get("x-kubernetes-embedded-resource")))
            if pruned != value:
                errs.append(invalid(child(path, "default"), value, "must not have unknown fields", "R-default-pruned"))
            for problem in customresource.validate(value, node, child(path, "default")):
                errs.append(f"{problem} [R-default-valid]")
        if isinstance(node.get("items"), Mapping):
            visit(node["items"], child(path, "items"), meta)
        for name, sub in (node.get("properties") or {}).items():
            embedded = node is schema or bool(node.get("x-kubernetes-embedded-resource"))
            visit(sub, key(child(path, "properties"), name), meta or (embedded and name in customresource.META_FIELDS))

    visit(schema, at, False)
    return errs
