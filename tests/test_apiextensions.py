"""The port of the API server's CRD validation (tests/apiextensions.py): one case per rule, each a small CRD
that breaks exactly that rule and is refused with the rule's id, beside a valid CRD that passes them all."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from .apiextensions import validate_crd, with_defaults


def base() -> dict[str, Any]:
    """A small valid CRD using most of the dialect: status, printer columns, defaults, nullable, list types."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "listKind": "WidgetList", "plural": "widgets", "singular": "widget",
                      "shortNames": ["wd"], "categories": ["all"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "default": 1},
                                "ratio": {"type": "number", "nullable": True},
                                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "tags": {"type": "array", "items": {"type": "string"},
                                         "x-kubernetes-list-type": "set"},
                                "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                          "x-kubernetes-list-map-keys": ["name"],
                                          "items": {"type": "object", "required": ["name"], "properties": {
                                              "name": {"type": "string"}, "port": {"type": "integer"}}}},
                                "port": {"x-kubernetes-int-or-string": True,
                                         "anyOf": [{"type": "integer"}, {"type": "string"}]},
                                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                "limits": {"type": "object", "default": {"cpu": 1},
                                           "properties": {"cpu": {"type": "integer"}}},
                            },
                            "x-kubernetes-validations": [{"rule": "self.size < 100", "message": "too big"}],
                        },
                        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                    },
                }},
            }],
        },
    }


Mutation = Callable[[dict[str, Any]], None]


def spec_schema(c: dict[str, Any]) -> dict[str, Any]:
    return c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def props(c: dict[str, Any]) -> dict[str, Any]:
    return spec_schema(c)["properties"]


def root(c: dict[str, Any]) -> dict[str, Any]:
    return c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def version(c: dict[str, Any]) -> dict[str, Any]:
    return c["spec"]["versions"][0]


def put(target: Callable[[dict[str, Any]], dict[str, Any]], **fields: Any) -> Mutation:
    return lambda c: target(c).update(fields)


# (rule id, mutation, a fragment of the expected error)
CASES: list[tuple[str, Mutation, str]] = [
    ("decode", put(lambda c: props(c)["size"], exclusiveMinimum=0.0), "cannot unmarshal number"),
    ("decode", put(lambda c: props(c)["size"], minimumm=1), 'unknown field "minimumm"'),
    ("R-metadata", lambda c: c["metadata"].update(name="Widgets.example.dev"), "RFC 1123 subdomain"),
    ("R-crd-name", lambda c: c["metadata"].update(name="gadgets.example.dev"), 'spec.names.plural+"."+spec.group'),
    ("R-group", lambda c: c["spec"].update(group="example"), "at least one dot"),
    ("R-scope", lambda c: c["spec"].update(scope="Global"), 'Unsupported value: "Global"'),
    ("R-version-name", put(version, name="V1"), "DNS-1035"),
    ("R-versions", lambda c: c["spec"]["versions"].append({**copy.deepcopy(version(c)), "name": "v2"}),
     "exactly one version marked as storage"),
    ("R-deprecation-warning", put(version, deprecationWarning="old"), "only be set for deprecated versions"),
    ("R-names-required", lambda c: c["spec"]["names"].pop("plural"), "spec.names.plural: Required value"),
    ("R-names", lambda c: c["spec"]["names"].update(shortNames=["w_d"]), "spec.names.shortNames[0]"),
    ("R-names", lambda c: c["spec"]["names"].update(listKind="Widget"), "kind and listKind may not be the same"),
    ("R-schema-required", lambda c: version(c).pop("schema"), "schema.openAPIV3Schema: Required value"),
    ("R-printer-column", lambda c: version(c)["additionalPrinterColumns"][0].update(type="float"), "must be one of"),
    ("R-printer-column", lambda c: version(c)["additionalPrinterColumns"][0].update(jsonPath="spec.size"),
     "simple json path starting with ."),
    ("R-scale", lambda c: version(c)["subresources"].update(scale={"specReplicasPath": ".status.n",
                                                                 "statusReplicasPath": ".status.n"}),
     "should be a json path under .spec"),
    ("R-selectable-fields", put(version, selectableFields=[{"jsonPath": ".spec.labels"}]),
     "must point to a field of type string, boolean or integer"),
    ("R-api-approval", lambda c: c["spec"].update(group="widgets.k8s.io") or c["metadata"].update(
        name="widgets.widgets.k8s.io"), "api-approved.kubernetes.io"),
    ("R-preserve-unknown-fields", lambda c: c["spec"].update(preserveUnknownFields=True), "cannot set to true"),
    ("R-conversion", lambda c: c["spec"].update(conversion={"strategy": "Webhook"}), "required when strategy"),
    ("R-root-status", put(root, additionalProperties={"type": "string"}, properties={}),
     "allowed at the root of the schema if the status subresource is enabled"),
    ("R-root-nullable", put(root, nullable=True), "nullable cannot be true at the root"),
    ("R-type", put(lambda c: props(c)["size"], type="int"), 'Unsupported value: "int"'),
    ("R-type", put(lambda c: props(c)["ratio"], type="null"), "use nullable as an alternative"),
    ("R-default-forbidden", lambda c: root(c)["properties"]["metadata"].update(default={"name": "x"}),
     "in top-level metadata"),
    ("R-unsupported-keyword", put(lambda c: props(c)["ratio"], **{"$ref": "#/definitions/x"}), "$ref is not supported"),
    ("R-items-array", put(lambda c: props(c)["tags"], items=[{"type": "string"}]), "must be a schema object"),
    ("R-unique-items", put(lambda c: props(c)["tags"], uniqueItems=True), "runtime complexity becomes quadratic"),
    ("R-additional-properties", put(spec_schema, additionalProperties=False),
     "additionalProperties and properties are mutual exclusive"),
    ("R-preserve-unknown-false", put(lambda c: props(c)["extra"], **{"x-kubernetes-preserve-unknown-fields": False}),
     "must be true or undefined"),
    ("R-map-type", put(lambda c: props(c)["tags"], **{"x-kubernetes-map-type": "atomic"}),
     "must be object if x-kubernetes-map-type is specified"),
    ("R-list-type", put(lambda c: props(c)["labels"], **{"x-kubernetes-list-type": "set"}),
     "must be array if x-kubernetes-list-type is specified"),
    ("R-list-map-keys", put(lambda c: props(c)["ports"], **{"x-kubernetes-list-map-keys": ["port", "proto"]}),
     "entries must all be names of item properties"),
    ("R-map-set-items", lambda c: props(c)["ports"]["items"].update(required=[]),
     "must have a default or be a required property"),
    ("R-validation-rule", lambda c: spec_schema(c)["x-kubernetes-validations"][0].update(rule="self.size <\n 100",
                                                                                      message=""),
     "message must be specified if rule contains line breaks"),
    ("R-embedded-in-meta", lambda c: root(c)["properties"]["metadata"].update(**{"x-kubernetes-embedded-resource": True}),
     "must not be used inside of resource meta"),
    ("R-structural-array-items", lambda c: props(c)["tags"].pop("items"), "items: Required value"),
    ("R-structural-additional-properties", put(root, additionalProperties={"type": "string"}),
     "must not be used at the root"),
    ("R-structural-type", lambda c: props(c)["ratio"].pop("type"), "must not be empty for specified object fields"),
    ("R-structural-root-object", put(root, type="array", items={"type": "string"}), "must be object at the root"),
    ("R-structural-type-meta", put(lambda c: root(c)["properties"]["kind"], type="integer"), "must be string"),
    ("R-structural-metadata", put(lambda c: root(c)["properties"]["metadata"],
                                  properties={"labels": {"type": "object"}}),
     "must not specify anything other than name and generateName"),
    ("R-structural-int-or-string", put(lambda c: props(c)["port"], **{"x-kubernetes-preserve-unknown-fields": True}),
     "must be false if x-kubernetes-int-or-string is true"),
    ("R-structural-value-validation", put(lambda c: props(c)["ratio"], anyOf=[{"type": "number", "minimum": 0}]),
     "must be empty to be structural"),
    ("R-structural-pattern", put(lambda c: props(c)["mode"], pattern="(unclosed"), "must be a valid regular expression"),
    ("R-structural-complete", put(spec_schema, allOf=[{"properties": {"colour": {"minLength": 1}}}]),
     "because it is defined in"),
    ("R-structural-embedded", put(lambda c: props(c)["labels"], **{"x-kubernetes-embedded-resource": True}),
     "must not be used if x-kubernetes-embedded-resource is set"),
    ("R-default-pruned", put(lambda c: props(c)["limits"], default={"cpu": 1, "gpu": 2}), "must not have unknown fields"),
    ("R-default-valid", put(lambda c: props(c)["mode"], default="c"), 'Unsupported value: "c"'),
    ("R-default-valid", put(lambda c: props(c)["size"], default=0), "should be greater than 0"),
]


def test_the_base_crd_is_valid() -> None:
    assert validate_crd(base()) == []


def test_defaults_are_filled_before_validation() -> None:
    c = base()
    del c["spec"]["names"]["listKind"], c["spec"]["names"]["singular"]
    assert validate_crd(c) == []
    names = with_defaults(c)["spec"]["names"]
    assert (names["listKind"], names["singular"]) == ("WidgetList", "widget")


@pytest.mark.parametrize(("rule", "mutate", "fragment"), CASES,
                         ids=[f"{rule}:{i}" for i, (rule, _, _) in enumerate(CASES)])
def test_each_rule_refuses_what_it_forbids(rule: str, mutate: Mutation, fragment: str) -> None:
    c = base()
    mutate(c)
    errors = validate_crd(c)
    mine = [e for e in errors if e.endswith(f"[{rule}]")]
    assert mine, f"no [{rule}] error; got {errors}"
    assert any(fragment in e for e in mine), mine


def test_every_rule_has_a_case() -> None:
    import re
    from pathlib import Path

    # The port is tests/apiextensions.py and the modules it is split into (apiextensions_*.py).
    source = "".join(p.read_text() for p in sorted(Path(__file__).parent.glob("apiextensions*.py")))
    rules = set(re.findall(r'"(R-[a-z-]+)"', source)) | set(re.findall(r"\[(R-[a-z-]+)\]", source)) | {"decode"}
    assert rules - {c[0] for c in CASES} == set()
