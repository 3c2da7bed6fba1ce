"""The CustomResourceDefinition of WarpRun, generated from the pydantic models (never hand-copied).

Kubernetes wants a *structural* OpenAPI v3 schema in its own dialect (apiextensions.k8s.io/v1
JSONSchemaProps, OpenAPI 3.0), which pydantic's draft-2020 JSON schema is not. This module translates:

- every node typed, no `$ref`, no `anyOf` of different types, `nullable` instead of a null type;
- exclusive bounds are booleans beside `minimum`/`maximum` (a number does not even decode);
- no `additionalProperties` beside `properties`: the API server forbids it and prunes unknown fields of
  a structural schema instead (`kwarp validate` and the API server's field validation report them);
- no `uniqueItems: true` (quadratic, forbidden): a set of scalars becomes `x-kubernetes-list-type: set`;
- defaults without nulls, so that every default is pruned and validates against its own schema.

tests/apiextensions.py holds the CRD to the API server's static and structural rules.
"""

from __future__ import annotations

import copy
from typing import Any

from kwarp.core.spec import API_GROUP, API_VERSION, KIND, PLURAL, WarpRunSpec
from kwarp.core.status import WarpRunStatus

SHORT_NAMES = ["wr"]
CATEGORIES = ["kwarp", "all-training"]
# Printer columns: what `kubectl get wr` shows.
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
    {"name": "Members", "type": "string", "jsonPath": ".status.membersDone", "description": "members done"},
    {"name": "Reward", "type": "number", "jsonPath": ".status.reward"},
    {"name": "KL", "type": "number", "jsonPath": ".status.kl"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary",
     "description": "training steps done / total (percent)"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.estimatedCompletionTime",
     "description": "estimated end of training (UTC), from measured step rates"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
_DROP = {"title", "discriminator", "examples", "const"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _resolve(target, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: Any) -> Any:
    """Rewrite a resolved JSON schema node into a structural Kubernetes schema."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP}
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = node.pop(key)
            variants = [v for v in options if v.get("type") != "null"]
            nullable = len(variants) < len(options)
            if len(variants) == 1:
                merged = {**_structural(variants[0]), **node}
                # The API server checks `enum` even on a null (kube-openapi matches no enum value to null),
                # so a nullable enum would refuse null. Without `nullable`, a null is pruned before
                # validation and the field is absent, which the model reads as None: the same meaning.
                if nullable and "enum" not in merged:
                    merged["nullable"] = True
                node = merged
            else:
                # Different types (e.g. steps: int | [int]): the API server keeps the value as sent;
                # the operator validates it with the same pydantic model and reports a condition.
                kept = {k: v for k, v in node.items() if k == "description"}
                return kept | {"x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "default":
            # A null default says nothing; nulls inside an object default would be written into
            # every stored object by the API server.
            v = _drop_nulls(v)
            if v is None:
                continue
            out[k] = v
        elif k == "properties":
            out[k] = {name: _structural(p) for name, p in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = _structural(v)
        elif k == "enum":
            out[k] = [e for e in v if e is not None]
        elif k in ("exclusiveMinimum", "exclusiveMaximum"):
            _exclusive_bound(out, k, v)
        elif k == "additionalProperties" and v is False:
            continue  # forbidden beside properties; unknown fields are pruned (and reported) instead
        elif k == "uniqueItems":
            if v:
                out["x-kubernetes-list-type"] = "set"
        elif k in ("minimum", "maximum"):
            _inclusive_bound(out, k, v)
        else:
            out[k] = v
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _inclusive_bound(out: dict[str, Any], key: str, value: Any) -> None:
    exclusive = "exclusiveMinimum" if key == "minimum" else "exclusiveMaximum"
    current = out.get(key)
    if current is not None and out.get(exclusive):
        looser = value <= current if key == "minimum" else value >= current
        if looser:
            return  # the exclusive bound already written is at least as strict
        out.pop(exclusive)
    out[key] = value


def _exclusive_bound(out: dict[str, Any], key: str, value: Any) -> None:
    """draft-2020 `exclusiveMinimum: x` -> OpenAPI 3.0 `minimum: x, exclusiveMinimum: true`.

    With both an inclusive and an exclusive bound, the stricter one wins."""
    if isinstance(value, bool):
        out[key] = value
        return
    bound = "minimum" if key == "exclusiveMinimum" else "maximum"
    current = out.get(bound)
    stricter = current is None or (value >= current if bound == "minimum" else value <= current)
    if stricter:
        out[bound] = value
        out[key] = True


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def openapi_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def crd() -> dict[str, Any]:
    spec_schema = openapi_schema(WarpRunSpec)
    status_schema = openapi_schema(WarpRunStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A WARP alignment run: I iterations of M REINFORCE policies merged by SLERP and LiTI.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }
