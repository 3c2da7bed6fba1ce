"""The file:// store: atomic checkpoints and objects, listing by the layout, deletion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kwarp.core.checkpoints import MANIFEST, CheckpointError, write_manifest
from kwarp.store import FileStore, StoreError, layout, open_store


def _folder(path: Path, value: float = 1.0) -> Path:
    path.mkdir(parents=True)
    save_file({"w": torch.full((4,), value)}, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), FileStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path.resolve()
    with pytest.raises(StoreError, match="unsupported"):
        open_store("gs://bucket/x")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    key = layout.member_final("r", 0, 1)
    assert not store.has_checkpoint(key)
    manifest = store.put_checkpoint(_folder(tmp_path / "src"), key)
    assert store.has_checkpoint(key)
    assert store.read_manifest(key) == manifest
    folder = store.open_checkpoint(key)
    assert (folder / "config.json").is_file()
    assert store.verify_checkpoint(key).digest == manifest.digest


def test_write_checkpoint_context_is_atomic(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    key = layout.slerp("r", 0)
    with pytest.raises(RuntimeError), store.write_checkpoint(key) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        assert not store.has_checkpoint(key)
        raise RuntimeError("crash")
    assert not store.has_checkpoint(key)
    assert store.list() == []  # nothing half-written is visible
    with store.write_checkpoint(key, meta={"k": 1}) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
    assert store.has_checkpoint(key) and store.read_manifest(key).meta == {"k": 1}


def test_put_checkpoint_with_bad_manifest_is_rejected(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    write_manifest(src)
    save_file({"w": torch.zeros(4)}, str(src / "model.safetensors"))  # changed after the manifest
    store = FileStore(tmp_path / "root")
    with pytest.raises(CheckpointError):
        store.put_checkpoint(src, "r/base")
    assert not store.has_checkpoint("r/base")


def test_objects_and_listing(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put_json(layout.eval_json("r", 0), {"front": [1]})
    store.put_bytes(layout.member_log("r", 0, 0), b'{"step": 1}\n')
    assert store.get_json(layout.eval_json("r", 0)) == {"front": [1]}
    assert store.get_bytes("r/nothing") is None and store.get_json("r/nothing") is None
    store.put_checkpoint(_folder(tmp_path / "src"), layout.base("r"))
    keys = store.list("r/")
    assert keys == sorted(keys)
    assert "r/iter-0/eval.json" in keys and f"r/base/{MANIFEST}" in keys
    assert store.list("r/iter-0/") == ["r/iter-0/eval.json", "r/iter-0/member-0/metrics.jsonl"]
    assert store.exists("r/base/config.json")


def test_delete_prefix(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.put_checkpoint(_folder(tmp_path / "src"), layout.base("r"))
    store.put_json("other/x.json", {})
    assert store.delete_prefix("r") == 3
    assert store.list() == ["other/x.json"]
    assert store.delete_prefix("r") == 0


@pytest.mark.parametrize("key", ["../escape", "a//b", "/", "a/./b"])
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(StoreError):
        FileStore(tmp_path).put_bytes(key, b"x")


def test_layout_keys() -> None:
    assert layout.init("r", 0) == layout.base("r") == "r/base"
    assert layout.init("r", 2) == "r/iter-2/init"
    assert layout.member_final("r", 1, 0) == "r/iter-1/member-0/final"
    assert layout.member_state("r", 1, 0) == "r/iter-1/member-0/state"
    assert layout.slerp("r", 1) == "r/iter-1/slerp"
    assert layout.eval_json("r", 1) == "r/iter-1/eval.json"
