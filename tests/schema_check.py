"""Whether an instance is valid against a JSON schema, compiled once, answering exactly what jsonschema answers.

The test API server checks every write of a built-in kind against Kubernetes' strict OpenAPI schemas with
jsonschema (tests/k8s_openapi.py), which walks the schema anew for each object: ~3 ms for an operator Job,
most of the API server's admission under benchmarks/operator.py. Almost every write is valid, and for a
valid one jsonschema's answer is "no errors". `compile_check(schema, resolver)` turns a schema into nested
closures that answer only that question, valid or not, at a fraction of the cost; k8s_openapi asks it
first and runs jsonschema for the errors, with their messages and paths, only when it says invalid. So the
answers are jsonschema's: no check is skipped, only the walk of a valid object is cheaper.

It is exact for the keywords the Kubernetes schemas use, with jsonschema's Draft 2020-12 semantics (format
is an annotation there unless a format checker is given, and k8s_openapi gives none): type, enum (of
strings), properties, additionalProperties, required, items (one schema), oneOf, anyOf, allOf and $ref
(resolved through the validator's own registry); annotations (description, x-kubernetes-*, ...) are
ignored. Any other keyword raises `Unsupported` (when the schema is compiled, or when a $ref reaching it is
first followed), and the caller then asks jsonschema alone. tests/test_schema_check.py checks that the
answer equals jsonschema's (no errors or some) on kwarp's objects and on thousands of broken variants.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import referencing

Check = Callable[[Any], bool]

# Keywords that constrain nothing in Draft 2020-12 (format: no format checker is given).
ANNOTATIONS = frozenset({"description", "title", "format", "default", "examples", "deprecated", "readOnly",
                         "writeOnly", "$comment", "$schema", "$id", "$defs", "definitions"})  # fmt: skip


class Unsupported(ValueError):
    """The schema uses a keyword this module does not implement: ask jsonschema."""


def is_type(instance: Any, name: str) -> bool:
    """jsonschema's Draft 2020-12 type checker (draft 6 on: an integral float is an integer; a bool is
    neither an integer nor a number)."""
    if name == "string":
        return isinstance(instance, str)
    if name == "object":
        return isinstance(instance, dict)
    if name == "array":
        return isinstance(instance, list)
    if name == "null":
        return instance is None
    if name == "boolean":
        return isinstance(instance, bool)
    if name == "integer":
        return not isinstance(instance, bool) and (
            isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer()))
    if name == "number":
        return not isinstance(instance, bool) and isinstance(instance, numbers.Number)
    raise Unsupported(f"type {name!r}")


class _Compiler:
    def __init__(self) -> None:
        self.done: dict[int, Check] = {}  # by id of the schema node (held by the registry: ids stay valid)

    def compile(self, schema: Any, resolver: referencing.Resolver) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, Mapping):
            raise Unsupported(f"schema {schema!r}")
        key = id(schema)
        if key not in self.done:
            self.done[key] = self._node(schema, resolver)
        return self.done[key]

    def _node(self, schema: Mapping[str, Any], resolver: referencing.Resolver) -> Check:
        checks: list[Check] = []
        for keyword in schema:
            if keyword in ANNOTATIONS or keyword.startswith("x-") or keyword in ("properties", "additionalProperties"):
                continue
            value = schema[keyword]
            if keyword == "type":
                checks.append(_type_check(value))
            elif keyword == "enum":
                checks.append(_enum_check(value))
            elif keyword == "required":
                checks.append(_required_check(value))
            elif keyword == "items":
                checks.append(self._items(value, resolver))
            elif keyword in ("oneOf", "anyOf", "allOf"):
                checks.append(_combine(keyword, [self.compile(sub, resolver) for sub in value]))
            elif keyword == "$ref":
                checks.append(self._ref(value, resolver))
            else:
                raise Unsupported(f"keyword {keyword!r}")
        if "properties" in schema or "additionalProperties" in schema:
            checks.append(self._object(schema, resolver))
        if not checks:
            return _always
        if len(checks) == 1:
            return checks[0]
        return lambda instance: all(check(instance) for check in checks)

    def _object(self, schema: Mapping[str, Any], resolver: referencing.Resolver) -> Check:
        properties = {name: self.compile(sub, resolver) for name, sub in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties", True)
        if extra is True:
            def known(instance: Any) -> bool:
                if not isinstance(instance, dict):
                    return True
                return all(check(instance[name]) for name, check in properties.items() if name in instance)
            return known
        extra_check = self.compile(extra, resolver)

        def strict(instance: Any) -> bool:
            if not isinstance(instance, dict):
                return True
            for name, value in instance.items():
                check = properties.get(name, extra_check)
                if not check(value):
                    return False
            return True
        return strict

    def _items(self, items: Any, resolver: referencing.Resolver) -> Check:
        if not isinstance(items, Mapping | bool):
            raise Unsupported("items as a list")
        check = self.compile(items, resolver)
        return lambda instance: not isinstance(instance, list) or all(check(item) for item in instance)

    def _ref(self, ref: str, resolver: referencing.Resolver) -> Check:
        """Followed when first used: schemas may refer to themselves."""
        target: list[Check] = []

        def follow(instance: Any) -> bool:
            if not target:
                resolved = resolver.lookup(ref)
                target.append(self.compile(resolved.contents, resolved.resolver))
            return target[0](instance)
        return follow


def _always(instance: Any) -> bool:
    return True


def _never(instance: Any) -> bool:
    return False


def _type_check(types: Any) -> Check:
    names = [types] if isinstance(types, str) else list(types)
    for name in names:
        is_type(None, name)  # an unknown type name raises Unsupported now
    return lambda instance: any(is_type(instance, name) for name in names)


def _enum_check(values: Any) -> Check:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise Unsupported("enum of other than strings")  # jsonschema's equal() has its own rules for the rest
    allowed = frozenset(values)
    return lambda instance: isinstance(instance, str) and instance in allowed


def _required_check(names: Any) -> Check:
    names = list(names)
    return lambda instance: not isinstance(instance, dict) or all(name in instance for name in names)


def _combine(keyword: str, checks: list[Check]) -> Check:
    if keyword == "allOf":
        return lambda instance: all(check(instance) for check in checks)
    if keyword == "anyOf":
        return lambda instance: any(check(instance) for check in checks)
    return lambda instance: sum(1 for check in checks if check(instance)) == 1  # oneOf: exactly one


def compile_check(schema: Any, resolver: referencing.Resolver) -> Check:
    """A function answering whether an instance is valid against `schema` ($refs resolved by `resolver`),
    as jsonschema would; raises Unsupported, now or when first called, for keywords it does not implement."""
    return _Compiler().compile(schema, resolver)
