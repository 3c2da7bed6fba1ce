"""The local checkpoint cache (kwarp.store.cache): least-recently-used eviction that never takes an entry in
use (caches share one folder), and an entry damaged on disk refilled.
"""

from __future__ import annotations

import time
from pathlib import Path

from kwarp.core.checkpoints import Manifest, build_manifest, write_manifest
from kwarp.store.cache import CheckpointCache, eviction_order


def _fill_with(payload: bytes):
    def fill(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(payload)
        write_manifest(folder)

    return fill


def _manifest_of(payload: bytes, tmp: Path) -> Manifest:
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(payload)
    return build_manifest(tmp)


def test_cache_evicts_least_recently_used_but_never_an_entry_in_use(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    payloads = {name: bytes([k]) * 1000 for k, name in enumerate("ABCD")}
    manifests = {name: _manifest_of(p, tmp_path / f"m{name}") for name, p in payloads.items()}

    user = CheckpointCache(root, max_bytes=2500)  # room for two entries
    for name in "AB":
        user.open(manifests[name], _fill_with(payloads[name]))
        time.sleep(0.02)  # distinct last-use times
    user.release(manifests["A"].digest)  # B stays in use by `user`

    other = CheckpointCache(root, max_bytes=2500)
    other.open(manifests["C"], _fill_with(payloads["C"]))
    assert sorted(other.entries()) == sorted([manifests["B"].digest, manifests["C"].digest])  # A was LRU

    other.close()
    time.sleep(0.02)
    third = CheckpointCache(root, max_bytes=1500)  # room for one: B is in use, so C goes
    d = third.open(manifests["D"], _fill_with(payloads["D"]))
    assert sorted(third.entries()) == sorted([manifests["B"].digest, manifests["D"].digest])
    assert (d / "model.safetensors").read_bytes() == payloads["D"]

    user.close()
    third.open(manifests["A"], _fill_with(payloads["A"]))  # B is free now, the LRU one, and D is held
    assert sorted(third.entries()) == sorted([manifests["D"].digest, manifests["A"].digest])


def test_eviction_order_is_lru_within_budget() -> None:
    entries = {"a": (1.0, 100), "b": (3.0, 100), "c": (2.0, 100), "d": (4.0, 100)}
    assert eviction_order(entries, 250, keep=set()) == ["a", "c"]
    assert eviction_order(entries, 250, keep={"a"}) == ["c", "b"]
    assert eviction_order(entries, 1000, keep=set()) == []


def test_cache_refills_an_entry_damaged_on_disk(tmp_path: Path) -> None:
    payload = b"x" * 1000
    manifest = _manifest_of(payload, tmp_path / "m")
    cache = CheckpointCache(tmp_path / "cache")
    folder = cache.open(manifest, _fill_with(payload))
    (folder / "model.safetensors").write_bytes(b"y" * 1000)  # bit rot, same size
    calls = []

    def fill(f: Path) -> None:
        calls.append(f)
        _fill_with(payload)(f)

    assert cache.open(manifest, fill, verify_hashes=False) == folder and not calls  # sizes look fine
    assert cache.open(manifest, fill, verify_hashes=True) == folder and len(calls) == 1
    assert (folder / "model.safetensors").read_bytes() == payload
