"""tests/customresource.py's four walks of a custom resource's value (prune, prune_nulls, default, validate),
compiled once per schema into one pass that changes the value exactly as the four walks do.

Under benchmarks/operator.py every WarpRun status write walked the whole status (with its acceptedSpec, ~2-4 KB
of JSON) four times through the schema dict: ~1 ms of the API server's ~11 ms of CPU per Job (a third of its
cProfile). `compile_pass(schema)` turns the schema into nested closures, one per schema node, each of which
prunes, drops nulls, fills defaults and answers "valid or not" for its value in one visit, with the schema's
lookups done once, at compilation; `compile_root_pass(schema)` does the same for a whole resource, whose
apiVersion, kind and metadata the walks neither prune nor validate (customresource.admit_status and admit).

What it answers is the four walks' answer, by construction where it is not simple:
- the changes to the value (what is pruned, dropped, defaulted, in which key order) are the walks' own rules,
  node by node; tests/test_customresource_pass.py checks the output against the walks' on kwarp's statuses
  and thousands of broken variants;
- it only says whether the value is valid. When it says invalid, customresource.validate runs on the
  changed value and gives the messages, in its order; so a wrong "invalid" costs time, never a different
  answer, and only a wrong "valid" could (the test checks both directions);
- a schema node using a keyword this module does not fuse (preserve-unknown-fields, embedded resources,
  int-or-string, list types, uniqueItems, multipleOf, allOf/anyOf/oneOf/not, items as a list) runs the four
  walks themselves on its subtree, which is what they would do to it inside the whole walk;
- where the pass raises (a schema Python cannot check), the callers run the four walks from the start, so the
  failure comes where the walks' comes (after a Strict refusal of unknown fields, not before).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from tests import customresource
from tests.customresource import Schema, _has_type, _same
from tests.kube_json import json_copy

# Pass(value, path, unknown) -> valid: changes `value` (a dict or list) in place as prune, prune_nulls and
# default do, appends the paths of the fields pruned to `unknown`, and answers whether validate finds nothing.
Pass = Callable[[Any, str, list[str]], bool]

# Keywords customresource reads that this module leaves to the four walks (the node is handed to them).
_WALKS_ONLY = frozenset({"x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                         "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                         "uniqueItems", "multipleOf", "allOf", "anyOf", "oneOf", "not"})  # fmt: skip


def _walks(schema: Schema) -> Pass:
    """The four walks on this subtree: what the whole walks do to it, and validate's verdict on it."""

    def walks(value: Any, path: str, unknown: list[str]) -> bool:
        unknown += customresource.prune(value, schema, path=path)
        customresource.prune_nulls(value, schema)
        customresource.default(value, schema)
        return not customresource.validate(value, schema, path)
    return walks


def _prune_all(value: Any, path: str, unknown: list[str]) -> bool:
    """prune with no schema (under additionalProperties: true, or items of a node without them): every field
    of every object is unknown; nothing is dropped as null, defaulted or validated."""
    if isinstance(value, dict):
        for key in list(value):
            unknown.append(f"{path}.{key}" if path else key)
            del value[key]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _prune_all(item, f"{path}[{i}]", unknown)
    return True


class _Field:
    """What a parent needs of one child schema: how the child's null is treated, its default, its pass."""

    __slots__ = ("schema", "run", "scalar", "drop_null", "replace_null", "default", "default_is_scalar",
                 "default_valid", "null_valid")

    def __init__(self, schema: Schema, run: Pass, scalar: Callable[[Any], bool]):
        self.schema = schema
        self.run = run
        self.scalar = scalar  # validate's verdict on a string, number or boolean
        has_default = schema.get("default") is not None
        # prune_nulls drops a null that is neither nullable nor defaulted; default replaces a defaulted one.
        self.drop_null = not schema.get("nullable") and not has_default
        self.replace_null = has_default and not schema.get("nullable")
        self.default: Any = None
        self.default_valid = True
        if has_default:
            # default() copies the schema's default and then defaults inside it (never pruned): the same each time.
            template = json_copy(schema["default"])
            customresource.default(template, schema)
            self.default = template
            try:  # whether validate finds anything does not depend on the path (only its messages do)
                self.default_valid = not customresource.validate(template, schema, "x")
            except Exception:  # noqa: BLE001 - then "invalid": validate runs on the status and fails as it did
                self.default_valid = False
        self.default_is_scalar = not isinstance(self.default, dict | list)
        wanted = schema.get("type")
        self.null_valid = not (wanted and not schema.get("nullable")) and "enum" not in schema

    def fresh_default(self) -> Any:
        return self.default if self.default_is_scalar else json_copy(self.default)


def _null_member(container: Any, key: Any, field: _Field, *, in_list: bool = False) -> bool:
    """A null member of an object (or item of a list, which prune_nulls keeps) as prune_nulls and default leave
    it: dropped, replaced by the field's default, or kept; and whether validate accepts what is left."""
    if field.drop_null and not in_list:
        del container[key]
        return True
    if field.replace_null:
        container[key] = field.fresh_default()
        return field.default_valid
    return field.null_valid


class _Compiler:
    def __init__(self) -> None:
        self.done: dict[int, tuple[Schema, _Field]] = {}  # by id of the schema node (held: ids stay valid)

    def field(self, schema: Schema) -> _Field:
        key = id(schema)
        if key not in self.done:
            if _by_walks(schema):
                field = _Field(schema, _walks(schema), lambda value: not customresource.validate(value, schema, "x"))
            else:
                field = _Field(schema, self._node(schema), _scalar_check(schema))
            self.done[key] = (schema, field)
        return self.done[key][1]

    def _node(self, schema: Schema) -> Pass:
        items = schema.get("items")
        props = {key: self.field(sub) for key, sub in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties")
        extra_field = self.field(extra) if isinstance(extra, Mapping) else None
        keep_extra = extra is True and extra_field is None
        item_field = self.field(items) if isinstance(items, Mapping) else None
        defaults = [(key, f) for key, f in props.items() if f.default is not None]
        scalar = _scalar_check(schema)
        nullable = bool(schema.get("nullable"))
        wanted = schema.get("type")
        object_ok = not wanted or wanted == "object"
        array_ok = not wanted or wanted == "array"
        has_enum = "enum" in schema
        required = list(schema.get("required") or [])
        min_props, max_props = schema.get("minProperties"), schema.get("maxProperties")
        min_items, max_items = schema.get("minItems"), schema.get("maxItems")

        def enum_ok(value: Any) -> bool:
            return not has_enum or any(_same(value, e) for e in schema["enum"])

        def run(value: Any, path: str, unknown: list[str]) -> bool:
            if isinstance(value, dict):
                valid = object_ok
                for key, child in list(value.items()):
                    field = props.get(key, extra_field)
                    if field is None:
                        if keep_extra:
                            _prune_all(child, f"{path}.{key}" if path else key, unknown)
                        else:
                            unknown.append(f"{path}.{key}" if path else key)
                            del value[key]
                    elif child is None:
                        valid = _null_member(value, key, field) and valid
                    elif isinstance(child, dict | list):
                        valid = field.run(child, f"{path}.{key}" if path else key, unknown) and valid
                    else:
                        valid = field.scalar(child) and valid
                for key, field in defaults:  # absent ones, after the present ones, in the schema's order
                    if key not in value:
                        value[key] = field.fresh_default()
                        valid = valid and field.default_valid
                if not valid:
                    return False
                if required and not all(name in value for name in required):
                    return False
                if (min_props is not None and len(value) < min_props) or (max_props is not None and len(value) > max_props):
                    return False
                return enum_ok(value)
            if isinstance(value, list):
                if item_field is None:
                    for i, item in enumerate(value):
                        _prune_all(item, f"{path}[{i}]", unknown)
                    valid = array_ok
                else:
                    valid = array_ok
                    for i, item in enumerate(value):
                        if item is None:  # prune_nulls keeps a null item; default may replace it
                            valid = _null_member(value, i, item_field, in_list=True) and valid
                        elif isinstance(item, dict | list):
                            valid = item_field.run(item, f"{path}[{i}]", unknown) and valid
                        else:
                            valid = item_field.scalar(item) and valid
                if not valid:
                    return False
                if (min_items is not None and len(value) < min_items) or (max_items is not None and len(value) > max_items):
                    return False
                return enum_ok(value)
            if value is None:
                return not (wanted and not nullable) and not has_enum
            return scalar(value)
        return run


    def root(self, schema: Schema) -> Pass | None:
        """The pass for a whole resource, as admit runs the walks on it: prune keeps apiVersion, kind and
        metadata as they are, prune_nulls and default still see them, validate sees the rest (the body).
        None when the root uses a keyword left to the walks, or an enum: then admit runs them."""
        if _by_walks(schema) or "enum" in schema:
            return None
        props = {key: self.field(sub) for key, sub in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties")
        extra_field = self.field(extra) if isinstance(extra, Mapping) else None
        keep_extra = extra is True and extra_field is None
        defaults = [(key, f) for key, f in props.items() if f.default is not None]
        wanted = schema.get("type")
        object_ok = not wanted or wanted == "object"
        required = list(schema.get("required") or [])
        min_props, max_props = schema.get("minProperties"), schema.get("maxProperties")
        meta = customresource.META_FIELDS

        def run(value: Any, path: str, unknown: list[str]) -> bool:
            valid = object_ok
            for key, child in list(value.items()):
                field = props.get(key, extra_field)
                if key in meta:  # not pruned, not validated; its nulls and defaults as prune_nulls and default do
                    if field is None:
                        continue
                    if child is None:
                        _null_member(value, key, field)  # its verdict is not validate's to give
                    else:
                        customresource.prune_nulls(child, field.schema)
                        customresource.default(child, field.schema)
                elif field is None:
                    if keep_extra:
                        _prune_all(child, key, unknown)
                    else:
                        unknown.append(key)
                        del value[key]
                elif child is None:
                    valid = _null_member(value, key, field) and valid
                elif isinstance(child, dict | list):
                    valid = field.run(child, key, unknown) and valid
                else:
                    valid = field.scalar(child) and valid
            for key, field in defaults:
                if key not in value:
                    value[key] = field.fresh_default()
                    valid = (key in meta or field.default_valid) and valid
            if not valid:
                return False
            body = len(value) - sum(1 for key in meta if key in value)
            if required and not all(name in value and name not in meta for name in required):
                return False
            return not ((min_props is not None and body < min_props) or (max_props is not None and body > max_props))
        return run


def _by_walks(schema: Schema) -> bool:
    """Whether a node uses a keyword left to the four walks (or items as a list, which they cannot read)."""
    items = schema.get("items")
    return bool(_WALKS_ONLY.intersection(schema)) or not (items is None or isinstance(items, Mapping))


def _scalar_check(schema: Schema) -> Callable[[Any], bool]:
    """validate's verdict on a string, number or boolean: type, enum, bounds, lengths, pattern."""
    wanted = schema.get("type")
    enum = schema.get("enum") if "enum" in schema else None
    strings = frozenset(enum) if isinstance(enum, list) and all(isinstance(e, str) for e in enum) else None
    low, high = schema.get("minimum"), schema.get("maximum")
    low_open, high_open = bool(schema.get("exclusiveMinimum")), bool(schema.get("exclusiveMaximum"))
    has_low, has_high = "minimum" in schema, "maximum" in schema
    min_len, max_len = schema.get("minLength"), schema.get("maxLength")
    has_min_len, has_max_len = "minLength" in schema, "maxLength" in schema
    search = _searcher(schema["pattern"]) if "pattern" in schema else None

    of_type = _type_check(wanted)
    if enum is None and not (has_low or has_high or has_min_len or has_max_len or search):
        return of_type  # most fields: the type alone

    def check(value: Any) -> bool:
        if not of_type(value):
            return False
        if enum is not None:
            if strings is not None:
                if not (isinstance(value, str) and value in strings):
                    return False
            elif not any(_same(value, e) for e in enum):
                return False
        if isinstance(value, int | float) and not isinstance(value, bool):
            if has_low and not (value > low if low_open else value >= low):
                return False
            if has_high and not (value < high if high_open else value <= high):
                return False
        elif isinstance(value, str):
            if has_min_len and len(value) < min_len:
                return False
            if has_max_len and len(value) > max_len:
                return False
            if search is not None and not search(value):
                return False
        return True
    return check


def _searcher(pattern: Any) -> Callable[[str], Any]:
    """re.search with `pattern`, compiled now; one Python cannot compile fails when a string is checked, as
    validate fails then, not when the schema is compiled."""
    try:
        return re.compile(pattern).search
    except (re.error, TypeError):
        return lambda value: re.search(pattern, value)


def _type_check(wanted: Any) -> Callable[[Any], bool]:
    """customresource._has_type(value, wanted) for a value that is not a dict, list or null (no type: any)."""
    if not wanted:
        return lambda value: True
    if wanted == "string":
        return lambda value: isinstance(value, str)
    if wanted == "boolean":
        return lambda value: isinstance(value, bool)
    if wanted == "number":
        return lambda value: isinstance(value, int | float) and not isinstance(value, bool)
    if wanted == "integer":  # an integral float is an integer, as Go's unstructured JSON decodes it
        return lambda value: (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
    return lambda value: _has_type(value, wanted)


_compiled: dict[int, tuple[Schema, Any]] = {}  # by id of the schema; the schema is held so the id stays its own
_roots: dict[int, tuple[Schema, Any]] = {}


def _cached(cache: dict[int, tuple[Schema, Any]], schema: Schema, build: Callable[[Schema], Any]) -> Any:
    """build(schema), once while the schema object lives (its id is the key, the schema held beside it)."""
    key = id(schema)
    hit = cache.get(key)
    if hit is None or hit[0] is not schema:
        if len(cache) >= 64:  # CRDs re-registered in a long test session: forget the oldest
            del cache[next(iter(cache))]
        hit = cache[key] = (schema, build(schema))
    return hit[1]


def compile_root_pass(schema: Schema) -> Pass | None:
    """The pass for whole resources of a CRD's `schema` (see _Compiler.root), or None: the walks decide."""
    return _cached(_roots, schema, lambda s: _Compiler().root(s))


def compile_pass(schema: Schema) -> Pass:
    """The one pass for values of `schema`, compiled on first use and kept while the schema object is."""
    return _cached(_compiled, schema, lambda s: _Compiler().field(s)).run
