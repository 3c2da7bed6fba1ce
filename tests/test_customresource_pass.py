"""The compiled pass (tests/customresource_pass.py) does to a value what customresource's four walks do, and
admit_status answers what it answered with the four walks: the same stored status, byte for byte (key order
included), the same unknown fields, the same refusal with the same causes in the same order. Checked on
kwarp's WarpRun statuses (tests/warprun_statuses.json: written by the operator in benchmarks/operator.py and
in tests/test_operator_{export,fault,kueue,progress}.py, one of each shape), on the WarpRun specs, and on
thousands of variants of them broken one change each; and on a schema that uses every keyword the walks read.
The pass's "valid" is checked both ways against validate: a wrong "valid" would admit what the walks refuse."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests import customresource
from tests.customresource import FieldValidationError, InvalidError, Schema
from tests.customresource_pass import compile_pass
from tests.kube_json import json_copy
from tests.kube_json import json_paths as paths
from tests.test_api_validity import example_warpruns, warprun_schema

STATUSES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "warprun_statuses.json").read_text())
SCHEMA = warprun_schema()


def four_walks_admit_status(obj: Mapping[str, Any], schema: Schema, *, field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
    """customresource.admit_status as it was before the compiled pass (the oracle)."""
    sub = schema["properties"]["status"]
    out = dict(obj)
    out["status"] = status = json_copy(obj["status"])
    unknown = customresource.prune(status, sub, path="status")
    warnings = customresource.unknown_field_warnings(unknown, field_validation)
    customresource.prune_nulls(status, sub)
    customresource.default(status, sub)
    causes = customresource.validate(status, sub, "status")
    if causes:
        raise InvalidError(causes)
    return out, warnings


def four_walks_admit(obj: Mapping[str, Any], schema: Schema, *, namespaced: bool = True, namespace: str = "default",
                     field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
    """customresource.admit as it was before the compiled pass (the oracle)."""
    out = json_copy(dict(obj))
    if namespaced:
        out.setdefault("metadata", {}).setdefault("namespace", namespace)
    unknown = customresource.prune(out, schema, root=True)
    warnings = customresource.unknown_field_warnings(unknown, field_validation)
    customresource.prune_nulls(out, schema)
    customresource.default(out, schema)
    body = {k: v for k, v in out.items() if k not in customresource.META_FIELDS}
    body_schema = {**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items()
                                            if k not in customresource.META_FIELDS}}
    causes = customresource.validate(body, body_schema)
    causes += customresource.k8s_names.object_meta(out.get("metadata") or {}, namespaced=namespaced)
    if causes:
        raise InvalidError(causes)
    return out, warnings


def outcome(admit: Any, obj: dict[str, Any], mode: str, schema: Schema = SCHEMA) -> tuple[str, Any]:
    try:
        out, warnings = admit(obj, schema, field_validation=mode)
    except FieldValidationError as err:
        return "strict", (str(err), err.unknown)
    except InvalidError as err:
        return "invalid", err.causes
    except (AttributeError, TypeError) as err:  # metadata not an object: both fail before admitting anything
        return "error", type(err).__name__
    return "stored", (json.dumps(out), warnings)


def by_walks(value: Any, schema: Schema, path: str) -> tuple[str, list[str], list[str]]:
    out = json_copy(value)
    unknown = customresource.prune(out, schema, path=path)
    customresource.prune_nulls(out, schema)
    customresource.default(out, schema)
    return json.dumps(out), unknown, customresource.validate(out, schema, path)


def by_pass(value: Any, schema: Schema, path: str) -> tuple[str, list[str], bool]:
    out = json_copy(value)
    unknown: list[str] = []
    valid = compile_pass(schema)(out, path, unknown)
    return json.dumps(out), sorted(unknown), valid


def assert_same(value: Any, schema: Schema, path: str, label: str) -> bool:
    stored, unknown, errors = by_walks(value, schema, path)
    stored2, unknown2, valid = by_pass(value, schema, path)
    assert (stored2, unknown2) == (stored, unknown), label
    assert valid == (not errors), f"{label}: the pass says valid={valid}, validate says {errors[:3]}"
    return valid


# ------------------------------------------------------------------------------------ variants


REPLACEMENTS = [None, 0, -1, 1.5, 2.0, 10**20, True, "x", "", "Purge", float("nan"), [], {}, ["x"], [None], [{}],
                [{"zzUnknown": 1}], {"zzUnknown": 1}, {"a": None}]  # fmt: skip


def mutated(value: dict[str, Any], rng: random.Random) -> tuple[str, dict[str, Any]]:
    """`value` with one change at a random place: replaced (by a null, a wrong type, an unknown field...),
    removed (a defaulted or required field), an unknown field added, a string misspelt, a null list item."""
    out = copy.deepcopy(value)
    path = rng.choice([p for p in paths(out) if p])
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    key, old = path[-1], parent[path[-1]]
    how = rng.choice(["replace", "replace", "replace", "remove", "unknown", "misspell", "null item"])
    if how == "remove" and isinstance(parent, dict):
        del parent[key]
    elif how == "unknown" and isinstance(old, dict):
        old["zzUnknown"] = {"v": None}
    elif how == "misspell" and isinstance(old, str):
        parent[key] = old + "x"
    elif how == "null item" and isinstance(old, list):
        old.append(None)
    else:
        how = "replace"
        parent[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
    return f"{how} {'.'.join(map(str, path))}", out


def specs() -> list[tuple[str, dict[str, Any]]]:
    found = [(name, doc["spec"]) for name, doc in example_warpruns()]
    return found + [(f"acceptedSpec {i}", s["acceptedSpec"]) for i, s in enumerate(STATUSES) if "acceptedSpec" in s]


# ------------------------------------------------------------------------------------ tests


def test_kwarps_statuses_are_stored_as_the_four_walks_store_them() -> None:
    assert len(STATUSES) > 10
    sub = SCHEMA["properties"]["status"]
    for i, status in enumerate(STATUSES):
        assert assert_same(status, sub, "status", f"status {i}"), f"status {i} is one the operator wrote: valid"
        obj = {"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": "r"}, "spec": {}, "status": status}
        assert outcome(customresource.admit_status, obj, "Warn") == outcome(four_walks_admit_status, obj, "Warn")


@pytest.mark.parametrize("mode", ["Strict", "Warn", "Ignore"])
def test_broken_statuses_are_answered_as_the_four_walks_answer(mode: str) -> None:
    rng = random.Random(f"customresource-pass-{mode}")
    seen: dict[str, int] = {"stored": 0, "strict": 0, "invalid": 0}
    for i, status in enumerate(STATUSES):
        for _ in range(40):
            how, variant = mutated(status, rng)
            if rng.random() < 0.3:  # two changes: an unknown field beside an invalid value, say
                how2, variant = mutated(variant, rng)
                how = f"{how}; {how2}"
            obj = {"apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": "r"}, "spec": {},
                   "status": variant}  # fmt: skip
            want = outcome(four_walks_admit_status, obj, mode)
            assert outcome(customresource.admit_status, obj, mode) == want, f"status {i}, {how}"
            seen[want[0]] += 1
    assert seen["invalid"] > 100 and seen["stored"] > 100, seen
    assert (seen["strict"] > 50) == (mode == "Strict"), seen


def test_specs_and_their_variants_pass_as_the_four_walks_leave_them() -> None:
    """The spec's schema uses what the status's does not: enums, bounds, patterns, preserved unknown fields."""
    sub = SCHEMA["properties"]["spec"]
    rng = random.Random("customresource-pass-spec")
    judged = {True: 0, False: 0}
    for label, spec in specs():
        assert assert_same(spec, sub, "spec", label)
        for _ in range(60):
            how, variant = mutated(spec, rng)
            judged[assert_same(variant, sub, "spec", f"{label}, {how}")] += 1
    assert judged[True] > 100 and judged[False] > 300, judged


def whole_runs() -> list[tuple[str, dict[str, Any]]]:
    """The example WarpRuns, each with a status the operator wrote and the metadata kopf adds."""
    out = []
    for i, (name, doc) in enumerate(example_warpruns()):
        meta = {**doc.get("metadata", {}), "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
                "annotations": {"kopf.zalando.org/last-handled-configuration": json.dumps(doc["spec"])}}
        out.append((name, {**doc, "metadata": meta, "status": STATUSES[i % len(STATUSES)]}))
    return out


@pytest.mark.parametrize("mode", ["Strict", "Warn", "Ignore"])
def test_whole_runs_are_admitted_as_the_four_walks_admit_them(mode: str) -> None:
    """customresource.admit (creates, updates, patches of the main resource): root fields kept unpruned
    (apiVersion, kind, metadata), the metadata's own rules, the body's validation."""
    rng = random.Random(f"customresource-pass-whole-{mode}")
    seen: dict[str, int] = {"stored": 0, "strict": 0, "invalid": 0, "error": 0}
    for name, run in whole_runs():
        assert outcome(customresource.admit, run, mode) == outcome(four_walks_admit, run, mode) == ("stored", mock_any()), name
        for _ in range(60):
            how, variant = mutated(run, rng)
            want = outcome(four_walks_admit, variant, mode)
            assert outcome(customresource.admit, variant, mode) == want, f"{name}, {how}"
            seen[want[0]] += 1
    assert seen["invalid"] > 50 and seen["stored"] > 50, seen
    assert (seen["strict"] > 10) == (mode == "Strict"), seen


class mock_any:  # noqa: N801 - reads as a value in the assertion above
    def __eq__(self, other: object) -> bool:
        return True


# A root with what the WarpRun's has not: its metadata declared (nullable, defaulted), property counts, additional properties. Whole objects for it are generated at random.
ROOT_KEYWORDS: dict[str, Any] = {"type": "object", "required": ["spec"], "maxProperties": 4, "properties": {
    "metadata": {"type": "object", "properties": {"labels": {"type": "object", "default": {"a": "b"}}}},
    "kind": {"type": "string", "nullable": True},
    "apiVersion": {"type": "string", "default": "x/v1"},
    "spec": {"type": "object", "properties": {"n": {"type": "integer", "default": 2}, "s": {"type": "string"}}},
    "status": {"type": "object", "nullable": True, "default": {}, "properties": {"n": {"type": "integer"}}},
}, "additionalProperties": {"type": "string"}}  # fmt: skip


def test_a_root_with_every_keyword_the_walks_read_there_is_admitted_as_they_admit() -> None:
    rng = random.Random("customresource-pass-root")
    seen: dict[str, int] = {"stored": 0, "strict": 0, "invalid": 0, "error": 0}
    for schema in (ROOT_KEYWORDS, {**ROOT_KEYWORDS, "additionalProperties": True}, {**ROOT_KEYWORDS, "minProperties": 3},
                   {k: v for k, v in ROOT_KEYWORDS.items() if k != "additionalProperties"},
                   {**ROOT_KEYWORDS, "required": ["metadata"]}):  # never in the body validate sees: always refused
        for i in range(400):
            value = random_value(schema, rng)
            obj = {"metadata": {"name": "n"}, **(value if isinstance(value, dict) else {})}
            for key in ("metadata", "kind", "apiVersion"):
                if rng.random() < 0.2:
                    obj[key] = copy.deepcopy(rng.choice(SAMPLES))
            for mode in ("Strict", "Warn"):
                want = outcome(four_walks_admit, obj, mode, schema)
                assert outcome(customresource.admit, obj, mode, schema) == want, f"object {i}: {obj!r}"
                seen[want[0]] += 1
    assert min(seen["stored"], seen["strict"], seen["invalid"]) > 50, seen


# A schema with every keyword customresource's walks read, nested; values for it are generated at random.
EVERY_KEYWORD: dict[str, Any] = {"type": "object", "required": ["name"], "minProperties": 1, "maxProperties": 9, "properties": {
    "name": {"type": "string", "minLength": 2, "maxLength": 8, "pattern": "^[a-z]"},
    "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
    "odd": {"enum": [1, True, "1", None]},
    "count": {"type": "integer", "minimum": 0, "maximum": 5, "exclusiveMaximum": True, "nullable": True},
    "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": 0.5},
    "step": {"type": "number", "multipleOf": 0.5},
    "port": {"x-kubernetes-int-or-string": True},
    "tags": {"type": "array", "items": {"type": "string", "default": "t"}, "minItems": 1, "maxItems": 3,
             "x-kubernetes-list-type": "set"},
    "uniq": {"type": "array", "uniqueItems": True, "items": {"type": "integer"}},
    "byKey": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
              "items": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "integer", "default": 1}}}},
    "loose": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
              "properties": {"known": {"type": "object", "properties": {"a": {"type": "integer", "default": 3}}}}},
    "embedded": {"type": "object", "x-kubernetes-embedded-resource": True, "x-kubernetes-preserve-unknown-fields": True},
    "open": {"type": "object", "additionalProperties": True},
    "map": {"type": "object", "additionalProperties": {"type": "object", "required": ["n"], "nullable": True,
            "default": {"n": 1}, "properties": {"n": {"type": "integer"}, "d": {"type": "string", "default": "x"}}}},
    "nested": {"type": "object", "default": {"inner": {}}, "properties": {"inner": {"type": "object", "properties": {
        "x": {"type": "string", "default": "y"}, "list": {"type": "array", "nullable": True, "items": {"type": "integer"}}}}}},
    "choice": {"anyOf": [{"type": "integer"}, {"type": "string"}], "oneOf": [{"minimum": 0}, {"maximum": -1}]},
    "all": {"allOf": [{"type": "string"}, {"minLength": 1}], "not": {"enum": ["no"]}},
    "noType": {"properties": {"a": {"type": "boolean"}}, "items": {"type": "string"}},
}}  # fmt: skip

SAMPLES = [None, 0, 1, -1, 2, 4, 5, 0.5, 2.0, 1.25, True, False, "", "a", "ab", "Ab", "abcdefghi", "A", "B", "1", "no",
           [], [None], ["a", "a"], [1, 1], [{"k": "a"}, {"k": "a"}], [{"k": "a", "zz": 1}], {}, {"zz": None},
           {"n": None}, {"a": 1, "b": {"c": None}}, {"inner": None}, {"inner": {"x": None, "list": None}}]  # fmt: skip


def random_value(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """Mostly what the schema declares, sometimes something else."""
    if not isinstance(schema, Mapping) or depth > 4 or rng.random() < 0.04:
        return copy.deepcopy(rng.choice(SAMPLES))
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    if props or isinstance(extra, Mapping) or schema.get("type") == "object":
        out = {key: random_value(sub, rng, depth + 1) for key, sub in props.items() if rng.random() < 0.5}
        if isinstance(extra, Mapping):
            out |= {f"m{i}": random_value(extra, rng, depth + 1) for i in range(rng.randint(0, 2))}
        if rng.random() < 0.1:
            out["zzUnknown"] = random_value(None, rng, depth + 1)
        return out
    if schema.get("type") == "array" or "items" in schema:
        return [random_value(schema.get("items"), rng, depth + 1) for _ in range(rng.randint(0, 3))]
    fitting = [v for v in SAMPLES if not customresource.validate(v, schema, "x")]
    return copy.deepcopy(rng.choice(fitting if fitting and rng.random() < 0.9 else SAMPLES))


def test_every_keyword_the_walks_read_is_passed_as_they_do() -> None:
    rng = random.Random("customresource-pass-keywords")
    judged = {True: 0, False: 0}
    for i in range(3000):
        value = random_value(EVERY_KEYWORD, rng)
        judged[assert_same(value, EVERY_KEYWORD, "status", f"value {i}: {value!r}")] += 1
    assert judged[True] > 50 and judged[False] > 1000, judged


def test_the_pass_is_compiled_once_per_schema_object() -> None:
    sub = SCHEMA["properties"]["status"]
    assert compile_pass(sub) is compile_pass(sub)
    assert compile_pass(copy.deepcopy(sub)) is not compile_pass(sub)  # another CRD's schema: its own pass


def test_a_schema_the_pass_trips_on_is_answered_by_the_four_walks() -> None:
    """A pattern Python's re cannot compile, or a minimum that is not a number, fails where the walks fail:
    under Strict an unknown field is refused first, as prune runs before validate; the pass is not trusted
    with the order of failures, so admit_status hands such a write to the walks."""
    schema = {"type": "object", "properties": {"spec": {"type": "object"}, "status": {"type": "object", "properties": {
        "p": {"type": "string", "pattern": "(unclosed"},
        "m": {"type": "integer", "minimum": "0"},
        "x": {"type": "integer", "default": 1}}}}}  # fmt: skip

    def answer(admit: Any, status: dict[str, Any], mode: str) -> tuple[str, Any]:
        try:
            out, warnings = admit({"spec": {}, "status": status}, schema, field_validation=mode)
        except (FieldValidationError, InvalidError) as err:
            return type(err).__name__, str(err)
        except Exception as err:  # noqa: BLE001 - the walks' own failure, which the server answers as a 500
            return type(err).__name__, ""
        return "stored", (json.dumps(out), warnings)

    seen = set()
    for status in [{"p": "a"}, {"p": "a", "zz": 1}, {"m": 1, "zz": 1}, {"m": 1}, {"x": None, "zz": None}, {"p": None, "m": None}]:
        for mode in ("Strict", "Warn"):
            want = answer(four_walks_admit_status, status, mode)
            assert answer(customresource.admit_status, status, mode) == want, (status, mode)
            seen.add(want[0])
    assert seen == {"stored", "FieldValidationError", "error", "TypeError"}, seen
