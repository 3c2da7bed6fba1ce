"""Selectors and the object index of the test API server (tests/kube.py).

A LIST or a watch's initial listing must not cost the server work in proportion to every object it
holds: with 1000 WarpRuns (9000 Jobs) a benchmark of the operator would measure the emulator instead.
`ObjectIndex` keeps one resource's live objects by namespace and by label (key, value); a request's
selector picks the smallest candidate set its equality and set requirements allow, and every candidate
is still checked against the whole selector, so what a request receives does not depend on the index.

Label selectors follow Kubernetes' grammar (equality- and set-based requirements, ANDed); field
selectors support metadata.name and metadata.namespace, as the test server always has. Parsed selectors
are cached: the operator, kopf and the Job runners send the same few over and over, and a watch checks
its selector against every event of its resource.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

Obj = dict[str, Any]
# (operator, key, values): operator is one of =, !=, in, notin, exists, !exists
Requirement = tuple[str, str, frozenset[str]]

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)
_FIELD = re.compile(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$")
FIELDS = ("metadata.name", "metadata.namespace")


def _split_selector(selector: str) -> list[str]:
    """Split on commas outside parentheses: 'a in (x,y),b' -> ['a in (x,y)', 'b']."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


@functools.lru_cache(maxsize=4096)
def parse_label_selector(selector: str) -> tuple[Requirement, ...]:
    """The requirements of a label selector; ValueError names an unparseable one (the server's 400)."""
    out: list[Requirement] = []
    for requirement in _split_selector(selector):
        m = _REQUIREMENT.match(requirement)
        if m is None:
            raise ValueError(f"unparseable label selector requirement {requirement!r}")
        key = m["key"]
        if m["neg"]:
            out.append(("!exists", key, frozenset()))
        elif m["op"] is not None:
            out.append(("!=" if m["op"] == "!=" else "=", key, frozenset([m["value"]])))
        elif m["setop"] is not None:
            out.append((m["setop"], key, frozenset(v.strip() for v in m["values"].split(",") if v.strip())))
        else:
            out.append(("exists", key, frozenset()))
    return tuple(out)


def requirements_hold(requirements: Iterable[Requirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    for op, key, values in requirements:
        value = labels.get(key)
        if op == "=":
            if key not in labels or value not in values:
                return False
        elif op == "!=":
            if value in values:
                return False
        elif op == "in":
            if value not in values:
                return False
        elif op == "notin":
            if value in values:
                return False
        elif op == "exists":
            if key not in labels:
                return False
        elif key in labels:  # !exists
            return False
    return True


def label_selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes label selector semantics: equality-based and set-based requirements, ANDed."""
    return requirements_hold(parse_label_selector(selector or ""), labels)


@functools.lru_cache(maxsize=1024)
def parse_field_selector(selector: str) -> tuple[tuple[str, bool, str], ...]:
    """(field, equal, value) per requirement; ValueError for a field the server does not index."""
    out = []
    for requirement in _split_selector(selector):
        m = _FIELD.match(requirement)
        if m is None or m[1] not in FIELDS:
            raise ValueError(f"unsupported field selector {requirement!r}")
        out.append((m[1], m[2] != "!=", m[3]))
    return tuple(out)


def field_selector_matches(selector: str | None, obj: Obj) -> bool:
    meta = obj.get("metadata", {})
    for field, equal, value in parse_field_selector(selector or ""):
        actual = meta.get("name") if field == "metadata.name" else meta.get("namespace")
        if (actual == value) != equal:
            return False
    return True


class ObjectIndex:
    """The live objects of one resource, by namespace and by label, for LISTs that read only candidates.

    Kept in step with the server's object store by `put` (create, update) and `remove` (erase); labels
    changed by an update move the object between label sets. Lists come in the order in which each
    (namespace, name) was first created, as this server always listed (a name created again keeps its
    place; tests rely on it, e.g. pods created in the same second).
    """

    def __init__(self) -> None:
        self._by_ns: dict[str | None, dict[str, Obj]] = {}
        self._by_label: dict[tuple[str, str], set[tuple[str | None, str]]] = {}
        self._seq: dict[tuple[str | None, str], int] = {}

    def __len__(self) -> int:
        return sum(len(names) for names in self._by_ns.values())

    def put(self, ns: str | None, name: str, obj: Obj) -> None:
        self.remove(ns, name)
        self._seq.setdefault((ns, name), len(self._seq))
        self._by_ns.setdefault(ns, {})[name] = obj
        for item in (obj.get("metadata", {}).get("labels") or {}).items():
            self._by_label.setdefault(item, set()).add((ns, name))

    def remove(self, ns: str | None, name: str) -> None:
        names = self._by_ns.get(ns)
        old = names.pop(name, None) if names is not None else None
        if old is None:
            return
        if not names:
            del self._by_ns[ns]
        for item in (old.get("metadata", {}).get("labels") or {}).items():
            keys = self._by_label.get(item)
            if keys is not None:
                keys.discard((ns, name))
                if not keys:
                    del self._by_label[item]

    def candidates(self, namespace: str | None, name: str | None, requirements: tuple[Requirement, ...]) -> list[Obj]:
        """A superset of the objects a request selects (namespace None: all namespaces), in creation order.
        The caller checks each against the request."""
        if name is not None:
            spaces = [namespace] if namespace is not None else list(self._by_ns)
            found = [(ns, name) for ns in spaces if name in self._by_ns.get(ns, {})]
            return [self._by_ns[ns][n] for ns, n in sorted(found, key=self._seq.__getitem__)]
        narrowest: set[tuple[str | None, str]] | None = None
        for op, key, values in requirements:
            if op not in ("=", "in"):
                continue  # !=, notin, exists, !exists hold for unlabelled objects too: no narrowing
            keys: set[tuple[str | None, str]] = set()
            for value in values:
                keys |= self._by_label.get((key, value), set())
            if narrowest is None or len(keys) < len(narrowest):
                narrowest = keys
        if narrowest is None:
            spaces = [namespace] if namespace is not None else list(self._by_ns)
            pairs = [(ns, n) for ns in spaces for n in self._by_ns.get(ns, {})]
        else:
            pairs = [k for k in narrowest if namespace is None or k[0] == namespace]
        return [self._by_ns[ns][n] for ns, n in sorted(pairs, key=self._seq.__getitem__)]
