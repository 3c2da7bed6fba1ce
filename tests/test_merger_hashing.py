"""The output's sha256, taken on a thread of its own (kwarp.merger.hashing): the writer writes on while a hash
is pending, no buffer is handed back before its bytes are hashed, and every digest the manifest takes from the
writer is the sha256 of the file as it lies on disk, for direct, refused-direct (buffered fallback) and buffered
writes. Real files in the test's temporary folder, the real sha256 (held back by a gate where a test needs the
hash to lag).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from kwarp.core.checkpoints import DIGESTS, write_manifest
from kwarp.merger.streaming import Output, merge_checkpoints
from kwarp.merger.writer import Planned, PlannedShardWriter

from .models import perturbed, tiny_llama

torch.set_num_threads(1)

# (direct, direct_block, staging_bytes): direct I/O in whole 4 KiB blocks; a 256-byte block the disk refuses
# (the writer goes on buffered from the first refused write; tmpfs takes it); buffered writes.
MODES = {"direct": (True, 4096, 8192), "refused-direct": (True, 256, 768), "buffered": (False, 4096, 8192)}


class _GatedSha256:
    """The real sha256, whose updates wait until `gate` is set."""

    real = hashlib.sha256

    def __init__(self, gate: threading.Event) -> None:
        self._gate = gate
        self._sha = self.real()

    def update(self, data: Any) -> None:
        self._gate.wait()
        self._sha.update(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _wait_for(condition: Any, what: str, limit: float = 60.0) -> None:
    """Poll until `condition()` holds; fail after `limit` seconds (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_writer_writes_on_while_the_hash_waits_and_no_buffer_is_given_back_unhashed(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct, block, staging = MODES[mode]
    gate = threading.Event()
    monkeypatch.setattr(hashlib, "sha256", lambda *a: _GatedSha256(gate))
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{k}": torch.randn(5000 + 37 * k, generator=gen) for k in range(6)}  # about 20 KB each, odd sizes
    planned = [Planned(n, "F32", tuple(t.shape)) for n, t in tensors.items()]
    folder = tmp_path / mode
    writer = PlannedShardWriter(folder, planned, max_shard_bytes=1 << 30, queue_bytes=1 << 30, direct=direct,
                                direct_block=block, staging_bytes=staging)
    given_back: list[int] = []
    try:
        for n, t in tensors.items():
            writer.write(n, t, lambda t: given_back.append(t.data_ptr()))
        shard = folder / writer.names[0]
        data_bytes = sum(t.numel() * 4 for t in tensors.values())
        # Every byte but what waits in the staging buffer reaches the file while no hash has taken a single byte.
        _wait_for(lambda: shard.exists() and shard.stat().st_size >= data_bytes - staging,
                  f"{shard.name} written while its hash waits")
        assert given_back == [], "a buffer was handed back before its bytes were hashed"
    finally:
        gate.set()
    writer.close()
    assert given_back == [t.data_ptr() for t in tensors.values()]  # each once, in order, after its hash
    recorded = json.loads((folder / DIGESTS).read_text())
    assert recorded[shard.name]["sha256"] == _GatedSha256.real(shard.read_bytes()).hexdigest()


def test_an_error_of_the_hash_is_raised_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def update(self, data: Any) -> None:
            raise OSError("hash failed")

        def hexdigest(self) -> str:
            return ""

    monkeypatch.setattr(hashlib, "sha256", lambda *a: Broken())
    writer = PlannedShardWriter(tmp_path / "out", [Planned("a", "F32", (100,))], max_shard_bytes=1 << 20)
    writer.write("a", torch.zeros(100))
    with pytest.raises(OSError, match="hash failed"):
        writer.close()
    assert not (tmp_path / "out" / DIGESTS).exists()


@pytest.mark.parametrize("direct_writes", [True, False])
def test_the_manifest_of_a_merge_holds_the_sha256_of_each_file_on_disk(tmp_path: Path, direct_writes: bool) -> None:
    """Several shards of odd sizes, a merge, a LiTI and θ_init's own tensors: the digests the writers took while
    writing (which the manifest uses instead of reading the files) are those of the files as written."""
    init = tiny_llama(tmp_path / "init", seed=0, dtype=torch.bfloat16, num_hidden_layers=3)
    members = [perturbed(init, tmp_path / f"member-{k}", seed=k + 1) for k in range(2)]
    outputs = [Output(tmp_path / "slerp", 1.0), Output(tmp_path / "liti", 0.3), Output(tmp_path / "init-copy", 0.0)]
    merge_checkpoints(init, members, outputs, max_shard_bytes=30_000, threads=2, direct_writes=direct_writes)
    for out in outputs:
        recorded = json.loads((out.folder / DIGESTS).read_text())
        shards = sorted(p.name for p in out.folder.glob("*.safetensors"))
        assert len(shards) > 1 and sorted(recorded) == shards
        manifest = write_manifest(out.folder)
        for entry in manifest.files:
            assert entry.sha256 == hashlib.sha256((out.folder / entry.name).read_bytes()).hexdigest(), entry.name
