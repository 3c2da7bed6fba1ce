"""tests/kube_json.py: the API server's copies are copy.deepcopy's, and a watch event's line, encoded once for
every watcher, is byte for byte what json.dumps made of it for each; so is the answer to the write that
emitted it (aiohttp's json_response)."""

from __future__ import annotations

import copy
import json
from typing import Any

import aiohttp.web

from tests.kube_json import WatchEvent, json_copy, watch_line
from tests.kube_server import ApiServer

DOCUMENTS: list[Any] = [
    {},
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "labels": {"a": "b"}, "resourceVersion": "7"},
     "spec": {"template": {"spec": {"containers": [{"name": "c", "args": ["--x", "ü ☃ \u2028", ""]}]}}},
     "status": {"active": 1, "ready": None, "ratio": 0.5, "big": 2**70, "ok": True, "conditions": [], "nested": [[{}]]}},
    {"text": "quotes \" and \\ and \n and \x00", "nan-free": -0.0, "unicode-key-é": 1},
]


def test_json_copy_is_a_deep_copy() -> None:
    for doc in DOCUMENTS:
        out = json_copy(doc)
        assert out == doc == copy.deepcopy(doc)
        assert json.dumps(out) == json.dumps(doc)  # the same key order
        if isinstance(doc.get("metadata"), dict):
            out["metadata"]["labels"]["a"] = "changed"
            assert doc["metadata"]["labels"]["a"] == "b"
    shared = {"x": 1}
    doc = {"a": shared, "b": shared}
    out = json_copy(doc)
    assert out["a"] is out["b"] and out["a"] is not shared  # shared stays shared, as with deepcopy


def test_json_copy_of_what_marshal_cannot_write_is_deepcopys() -> None:
    class Tagged(dict):  # type: ignore[type-arg]
        pass

    doc = {"a": Tagged(b=1)}
    out = json_copy(doc)
    assert out == doc and type(out["a"]) is Tagged and out["a"] is not doc["a"]


def test_a_watch_line_is_json_dumps_of_the_event() -> None:
    for kind in ("ADDED", "MODIFIED", "DELETED"):
        for doc in DOCUMENTS:
            event = WatchEvent(kind, doc)
            want = json.dumps({"type": kind, "object": doc}).encode() + b"\n"
            assert event.line() == watch_line(event) == want
            assert watch_line({"type": kind, "object": doc}) == want
            assert event == {"type": kind, "object": doc}
            assert json.dumps(event) == json.dumps({"type": kind, "object": doc})


def test_the_answer_from_the_event_is_json_response() -> None:
    server = ApiServer()
    headers = [("Warning", '299 - "w"')]
    for doc in DOCUMENTS:
        want = aiohttp.web.json_response(doc, status=201, headers=headers)
        server._last_emitted = (doc, WatchEvent("ADDED", json_copy(doc)))
        for body in (doc, json_copy(doc)):  # the emitted object itself; another (json_response's own answer)
            got = server._answer(body, 201, headers)
            assert got.body == want.body and got.content_type == want.content_type and got.charset == want.charset
            assert got.status == want.status and list(got.headers.items()) == list(want.headers.items())
