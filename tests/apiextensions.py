"""The API server's static validation of a CustomResourceDefinition (apiextensions.k8s.io/v1), ported to Python.

A CRD that breaks one of these rules is refused by `kubectl apply` / `helm install` with 400 or 422.
The rules are written from the upstream source, not copied; each error names its rule id (``[R..]``) and
tests/test_apiextensions.py has one test per rule.

Followed: kubernetes/apiextensions-apiserver tag v0.36.3 (Kubernetes 1.36.3), commit
2e78d6fca8b214fd93118268eb9d36255d79738f:
- JSON decoding of v1 JSONSchemaProps (pkg/apis/apiextensions/v1/types_jsonschema.go): each keyword's type;
- pkg/apis/apiextensions/validation/validation.go: ValidateCustomResourceDefinition (metadata, spec, names,
  versions, printer columns, subresources, conversion, selectable fields, API approval, the OpenAPI schema
  rules of ValidateCustomResourceDefinitionOpenAPISchema and specStandardValidatorV3);
- pkg/apiserver/schema/convert.go (NewStructural), validation.go (ValidateStructural) and complete.go;
- pkg/apiserver/schema/defaulting/validation.go (ValidateDefaults: defaults pruned and valid).
Not ported: CEL compilation and cost limits of x-kubernetes-validations (only their static shape is checked;
kwarp's CRDs use none), the rules that compare a CRD with its previous version (updates), webhook URL/CA
bundle parsing, and Go's RE2 dialect (patterns are compiled with Python's `re`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from tests import customresource, k8s_names

Obj = Mapping[str, Any]
OPENAPI_TYPES = ("array", "boolean", "integer", "number", "object", "string")
PRINTER_TYPES = ("boolean", "date", "integer", "number", "string")
PRINTER_FORMATS = ("byte", "date", "date-time", "double", "float", "int32", "int64", "password")
ROOT_FIELDS_WITH_STATUS = (
    "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "required",
    "items", "properties", "externalDocs", "example", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)
VALIDATION_REASONS = ("FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired")
MAX_SELECTABLE_FIELDS = 8

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


# ------------------------------------------------------------------------------------ the CRD


def with_defaults(crd: Obj) -> dict[str, Any]:
    """SetDefaults_CustomResourceDefinition (v1): what the API server fills in before it validates."""
    out = copy.deepcopy(dict(crd))
    spec = out.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
    spec.setdefault("conversion", {"strategy": "None"})
    return out


def validate_crd(crd: Obj) -> list[str]:
    """Every rule the API server applies when a CustomResourceDefinition is created; [] when it would accept it."""
    errs: list[str] = []
    crd = with_defaults(crd)
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    meta = crd.get("metadata") or {}
    errs += [f"{e} [R-metadata]" for e in k8s_names.object_meta(meta, namespaced=False)]
    if meta.get("name") and meta.get("name") != f"{names.get('plural', '')}.{group}":
        errs.append(invalid("metadata.name", meta.get("name"), 'must be spec.names.plural+"."+spec.group', "R-crd-name"))
    errs += _group(group)
    errs += _scope(spec.get("scope"))
    errs += _versions(spec)
    errs += _names(names, "spec.names")
    errs += _api_approval(crd)
    if spec.get("preserveUnknownFields"):
        errs.append(invalid("spec.preserveUnknownFields", True, "cannot set to true, set "
                            "x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
                            "R-preserve-unknown-fields"))
    errs += _conversion(spec.get("conversion"))
    return errs


def _group(group: str) -> list[str]:
    if not group:
        return [required("spec.group", "R-group")]
    problems = k8s_names.dns1123_subdomain(group)
    if problems:
        return [invalid("spec.group", group, ",".join(problems), "R-group")]
    if len(group.split(".")) < 2:
        return [invalid("spec.group", group, "should be a domain with at least one dot", "R-group")]
    return []


def _scope(scope: Any) -> list[str]:
    if not scope:
        return [required("spec.scope", "R-scope")]
    if scope not in ("Cluster", "Namespaced"):
        return [unsupported("spec.scope", scope, ("Cluster", "Namespaced"), "R-scope")]
    return []


def _versions(spec: Obj) -> list[str]:
    errs: list[str] = []
    versions = spec.get("versions") or []
    if not versions:
        errs.append(required("spec.versions", "R-versions", "must have exactly one version marked as storage version"))
    seen: set[str] = set()
    for i, version in enumerate(versions):
        at = index("spec.versions", i)
        name = version.get("name", "")
        if name in seen:
            errs.append(invalid("spec.versions", name, "must contain unique version names", "R-versions"))
        seen.add(name)
        problems = k8s_names.dns1035_label(name)
        if problems:
            errs.append(invalid(child(at, "name"), name, ",".join(problems), "R-version-name"))
        errs += _deprecation(version, at)
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errs.append(required(child(at, "schema.openAPIV3Schema"), "R-schema-required"))
        else:
            status = "status" in (version.get("subresources") or {})
            errs += validate_schema(schema, child(at, "schema.openAPIV3Schema"), status_subresource=status)
            errs += _selectable_fields(version.get("selectableFields") or [], schema, child(at, "selectableFields"))
        errs += _subresources(version.get("subresources"), child(at, "subresources"))
        for j, column in enumerate(version.get("additionalPrinterColumns") or []):
            errs += _printer_column(column, index(child(at, "additionalPrinterColumns"), j))
    if versions and sum(bool(v.get("storage")) for v in versions) != 1:
        errs.append(invalid("spec.versions", [v.get("name") for v in versions],
                            "must have exactly one version marked as storage version", "R-versions"))
    return errs


def _deprecation(version: Obj, at: str) -> list[str]:
    warning = version.get("deprecationWarning")
    if warning is None:
        return []
    path = child(at, "deprecationWarning")
    if not version.get("deprecated"):
        return [invalid(path, warning, "can only be set for deprecated versions", "R-deprecation-warning")]
    errs = []
    if len(warning) > 256:
        errs.append(invalid(path, warning, "must be <= 256 characters long", "R-deprecation-warning"))
    if not warning:
        errs.append(invalid(path, warning, "must not be an empty string", "R-deprecation-warning"))
    if any(not ch.isprintable() for ch in warning):
        errs.append(invalid(path, warning, "must only contain printable UTF-8 characters", "R-deprecation-warning"))
    return errs


def _names(names: Obj, at: str) -> list[str]:
    errs = []
    for field in ("plural", "singular", "kind", "listKind"):
        if not names.get(field):
            errs.append(required(child(at, field), "R-names-required"))
    for field, lower in (("plural", False), ("singular", False), ("kind", True), ("listKind", True)):
        value = names.get(field) or ""
        problems = k8s_names.dns1035_label(value.lower() if lower else value) if value else []
        if problems:
            prefix = "may have mixed case, but should otherwise match: " if lower else ""
            errs.append(invalid(child(at, field), value, prefix + ",".join(problems), "R-names"))
    for field in ("shortNames", "categories"):
        for i, value in enumerate(names.get(field) or []):
            problems = k8s_names.dns1035_label(value)
            if problems:
                errs.append(invalid(index(child(at, field), i), value, ",".join(problems), "R-names"))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        errs.append(invalid(child(at, "listKind"), names["listKind"], "kind and listKind may not be the same", "R-names"))
    return errs


def _simple_json_path(value: str, at: str, rule: str) -> list[str]:
    if not value:
        return [invalid(at, value, "must not be empty", rule)]
    if not value.startswith("."):
        return [invalid(at, value, "must be a simple json path starting with .", rule)]
    return []


def _printer_column(column: Obj, at: str) -> list[str]:
    errs = []
    if not column.get("name"):
        errs.append(required(child(at, "name"), "R-printer-column"))
    ctype = column.get("type")
    if not ctype:
        errs.append(required(child(at, "type"), "R-printer-column", f"must be one of {','.join(PRINTER_TYPES)}"))
    elif ctype not in PRINTER_TYPES:
        errs.append(invalid(child(at, "type"), ctype, f"must be one of {','.join(PRINTER_TYPES)}", "R-printer-column"))
    if column.get("format") and column["format"] not in PRINTER_FORMATS:
        errs.append(invalid(child(at, "format"), column["format"], f"must be one of {','.join(PRINTER_FORMATS)}",
                            "R-printer-column"))
    if not column.get("jsonPath"):
        errs.append(required(child(at, "JSONPath"), "R-printer-column"))
    else:
        errs += _simple_json_path(column["jsonPath"], child(at, "JSONPath"), "R-printer-column")
    return errs


def _subresources(sub: Obj | None, at: str) -> list[str]:
    scale = (sub or {}).get("scale")
    if scale is None:
        return []
    errs = []
    for field, prefixes in (("specReplicasPath", (".spec.",)), ("statusReplicasPath", (".status.",)),
                            ("labelSelectorPath", (".spec.", ".status."))):
        value = scale.get(field)
        path = child(at, f"scale.{field}")
        if not value:
            if field != "labelSelectorPath":
                errs.append(required(path, "R-scale"))
            continue
        problems = _simple_json_path(value, path, "R-scale")
        if problems:
            errs += problems
        elif not value.startswith(prefixes):
            where = " or ".join(p.rstrip(".") for p in prefixes)
            errs.append(invalid(path, value, f"should be a json path under {where}", "R-scale"))
    return errs


def _selectable_fields(fields: list[Obj], schema: Obj, at: str) -> list[str]:
    errs, unique = [], set()
    for i, entry in enumerate(fields):
        path = child(index(at, i), "jsonPath")
        json_path = entry.get("jsonPath") or ""
        if not json_path:
            errs.append(required(path, "R-selectable-fields"))
            continue
        node: Obj | None = schema
        for part in json_path.lstrip(".").split("."):
            node = (node or {}).get("properties", {}).get(part)
        if node is None:
            errs.append(invalid(path, json_path, "is an invalid path: does not refer to a valid field",
                                "R-selectable-fields"))
            continue
        if json_path.lstrip(".").split(".")[0] == "metadata":
            errs.append(invalid(path, json_path, "must not point to fields in metadata", "R-selectable-fields"))
        if node.get("type") not in ("string", "boolean", "integer"):
            errs.append(invalid(path, json_path, "must point to a field of type string, boolean or integer",
                                "R-selectable-fields"))
        if json_path in unique:
            errs.append(f"{path}: Duplicate value: {json.dumps(json_path)} [R-selectable-fields]")
        unique.add(json_path)
    if len(unique) > MAX_SELECTABLE_FIELDS:
        errs.append(f"{at}: Too many: {len(unique)}: must have at most {MAX_SELECTABLE_FIELDS} items "
                    "[R-selectable-fields]")
    return errs


def _api_approval(crd: Obj) -> list[str]:
    group = (crd.get("spec") or {}).get("group") or ""
    protected = group in ("k8s.io", "kubernetes.io") or group.endswith((".k8s.io", ".kubernetes.io"))
    if not protected:
        return []
    value = ((crd.get("metadata") or {}).get("annotations") or {}).get("api-approved.kubernetes.io")
    if value is None:
        return [required("metadata.annotations[api-approved.kubernetes.io]", "R-api-approval",
                         "protected groups must have approval annotation \"api-approved.kubernetes.io\"")]
    if not (value.startswith("https://") or value.startswith("http://") or value.startswith("unapproved")):
        return [invalid("metadata.annotations[api-approved.kubernetes.io]", value,
                        "protected groups must have approval annotation \"api-approved.kubernetes.io\" set to "
                        "either a URL or a reason starting with \"unapproved\"", "R-api-approval")]
    return []


def _conversion(conversion: Obj | None) -> list[str]:
    if conversion is None:
        return []
    at = "spec.conversion"
    strategy = conversion.get("strategy")
    errs = []
    if not strategy:
        return [required(child(at, "strategy"), "R-conversion")]
    if strategy not in ("None", "Webhook"):
        return [unsupported(child(at, "strategy"), strategy, ("None", "Webhook"), "R-conversion")]
    webhook = conversion.get("webhook") or {}
    client = webhook.get("clientConfig")
    versions = webhook.get("conversionReviewVersions")
    if strategy == "Webhook":
        if client is None:
            errs.append(required(child(at, "webhook.clientConfig"), "R-conversion", "required when strategy is set to Webhook"))
        elif ("url" in client) == ("service" in client):
            errs.append(required(child(at, "webhook.clientConfig"), "R-conversion", "exactly one of url or service is required"))
        if not versions:
            errs.append(required(child(at, "webhook.conversionReviewVersions"), "R-conversion"))
        elif not {"v1", "v1beta1"} & set(versions):
            errs.append(invalid(child(at, "webhook.conversionReviewVersions"), versions,
                                "must include at least one of v1, v1beta1", "R-conversion"))
    elif webhook:
        errs.append(forbidden(child(at, "webhook"), "should not be set when strategy is not set to Webhook", "R-conversion"))
    return errs


# ------------------------------------------------------------------------------------ the schema


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
