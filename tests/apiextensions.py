"""The API server's static validation of a CustomResourceDefinition (apiextensions.k8s.io/v1), ported to Python.

A CRD that breaks one of these rules is refused by `kubectl apply` / `helm install` with 400 or 422.
The rules are written from the upstream source, not copied; each error names its rule id (``[R..]``) and
tests/test_apiextensions.py has one test per rule. This module holds the CRD's own rules; a version's
schema is tests/apiextensions_schema.py's, and what both share (decoding, paths and error messages, schema
walking) tests/apiextensions_json.py's.

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
from typing import Any

from tests import k8s_names
from tests.apiextensions_json import (  # noqa: F401  (walk: re-exported, tests/test_api_validity.py reads it here)
    Obj,
    child,
    decode_errors,
    forbidden,
    index,
    invalid,
    key,
    required,
    unsupported,
    walk,
)
from tests.apiextensions_schema import validate_schema

PRINTER_TYPES = ("boolean", "date", "integer", "number", "string")
PRINTER_FORMATS = ("byte", "date", "date-time", "double", "float", "int32", "int64", "password")
MAX_SELECTABLE_FIELDS = 8


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
