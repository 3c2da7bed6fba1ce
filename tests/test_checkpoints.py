"""Checkpoints: manifest written last, verification, atomic publication, shard-by-shard access, no pickles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kwarp.core.checkpoints import (
    MANIFEST,
    CheckpointError,
    Manifest,
    is_complete,
    refuse_pickles,
    staging,
    verify,
    write_manifest,
)
from kwarp.core.weights import ShardWriter, TensorReader, iter_tensors, save_state_dict, shard_map


def _state(n: int = 6, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"model.layers.{i}.weight": torch.randn(size, size, generator=g) for i in range(n)}


def test_sharded_write_and_read_back(tmp_path: Path) -> None:
    state = _state()
    dest = tmp_path / "ckpt"
    manifest = save_state_dict(state, dest, max_shard_bytes=40_000)  # 16 KiB tensors -> 3 shards of 2
    shards = shard_map(dest)
    assert len(shards) == 3 and all(name.endswith(".safetensors") for name in shards)
    assert (dest / "model.safetensors.index.json").is_file()
    back = dict(iter_tensors(dest))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert {e.name for e in manifest.files} == {*shards, "model.safetensors.index.json"}
    with TensorReader(dest) as reader:
        assert torch.equal(reader.get("model.layers.4.weight"), state["model.layers.4.weight"])


def test_single_shard_has_no_index(tmp_path: Path) -> None:
    save_state_dict(_state(2), tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [MANIFEST, "model.safetensors"]


def test_verify_detects_corruption_and_truncation(tmp_path: Path) -> None:
    dest = tmp_path / "c"
    save_state_dict(_state(2), dest)
    verify(dest)
    shard = dest / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert is_complete(dest)  # sizes still match: the fast check passes ...
    with pytest.raises(CheckpointError, match="sha256"):  # ... the full check does not
        verify(dest)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(CheckpointError, match="bytes"):
        verify(dest, hashes=False)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        verify(dest)


def test_no_manifest_means_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    save_file({"a": torch.zeros(2)}, str(tmp_path / "c" / "model.safetensors"))
    assert not is_complete(tmp_path / "c")
    with pytest.raises(CheckpointError, match="never completed"):
        verify(tmp_path / "c")


def test_staging_publishes_atomically_or_not_at_all(tmp_path: Path) -> None:
    dest = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), staging(dest) as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))
        raise RuntimeError("killed mid-write")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too
    with pytest.raises(CheckpointError, match="without a MANIFEST"), staging(dest) as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))
    assert not dest.exists()
    with staging(dest) as tmp:
        save_file({"a": torch.ones(2)}, str(tmp / "model.safetensors"))
        write_manifest(tmp)
    assert is_complete(dest, hashes=True)


def test_republishing_replaces_not_merges(tmp_path: Path) -> None:
    dest = tmp_path / "c"
    save_state_dict(_state(6), dest, max_shard_bytes=40_000)
    save_state_dict(_state(1), dest)
    assert sorted(p.name for p in dest.iterdir()) == [MANIFEST, "model.safetensors"]
    verify(dest)


def test_manifest_json_round_trip_and_digest(tmp_path: Path) -> None:
    dest = tmp_path / "c"
    m = save_state_dict(_state(2), dest, meta={"kind": "test"})
    again = Manifest.from_json((dest / MANIFEST).read_text())
    assert again.files == m.files and again.meta["kind"] == "test"
    assert again.digest == m.digest and len(m.digest) == 64
    with pytest.raises(CheckpointError, match="malformed"):
        Manifest.from_json("{}")


def test_pickles_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")  # what kwarp must never load
    (folder / "config.json").write_text(json.dumps({}))
    with pytest.raises(CheckpointError, match="pickle"):
        refuse_pickles(folder)
    with pytest.raises(CheckpointError):
        list(iter_tensors(folder))


def test_shard_writer_bounds_memory_by_shard(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "out", max_shard_bytes=1000)
    for i in range(5):
        w.add(f"t{i}", torch.zeros(200))  # 800 bytes each: one tensor per shard
        assert w._pending_bytes <= 1000
    names = w.close()
    assert len(names) == 5 and names[0] == "model-00001-of-00005.safetensors"
