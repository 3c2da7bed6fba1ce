"""JSON documents in the test API server: copying them (tests/kube_server.py, tests/kube_store.py,
tests/customresource.py), encoding each watch event once, and walking their paths (the tests' broken variants)."""

from __future__ import annotations

import copy
import json
import marshal
from collections.abc import Iterator
from typing import Any


def json_copy(obj: Any) -> Any:
    """A deep copy of a JSON document (dicts, lists, strings, numbers, booleans, None), as copy.deepcopy makes
    it (shared sub-objects stay shared, as marshal keeps references), at a fifth of its CPU: the server copies
    each object it stores, emits and patches, and copy.deepcopy's per-object dispatch was a tenth of its
    CPU under benchmarks/operator.py. Anything marshal cannot write (a dict subclass, say) goes to deepcopy."""
    try:
        return marshal.loads(marshal.dumps(obj))
    except ValueError:
        return copy.deepcopy(obj)


def json_paths(value: Any, at: tuple = ()) -> Iterator[tuple]:
    """Every path in a JSON document, as tuples of keys and list indexes, the document's own () first."""
    yield at
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from json_paths(sub, (*at, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from json_paths(sub, (*at, i))


class WatchEvent(dict):  # type: ignore[type-arg]
    """A watch event ({"type", "object"}) as the journal and the watch bus hold it. It is never changed once
    emitted (its object is the server's own copy), so its JSON is made once, not once per watcher (three
    watch Jobs in benchmarks/operator.py: the operator, the Job controller, the benchmark) and once more for
    the write's answer: `object_json` is the object's encoding (json.dumps, as aiohttp's json_response
    writes it), `line()` the watch line, byte for byte json.dumps(event) + newline."""

    __slots__ = ("object_json", "_line")

    def __init__(self, kind: str, obj: dict[str, Any]):
        super().__init__(type=kind, object=obj)
        self.object_json = json.dumps(obj)
        self._line: bytes | None = None

    def line(self) -> bytes:
        if self._line is None:  # json.dumps' default separators: ", " between members, ": " after a key
            self._line = f'{{"type": {json.dumps(self["type"])}, "object": {self.object_json}}}\n'.encode()
        return self._line


def watch_line(event: dict[str, Any]) -> bytes:
    """One watch event as its line on the stream."""
    return event.line() if isinstance(event, WatchEvent) else json.dumps(event).encode() + b"\n"
