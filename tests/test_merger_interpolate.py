"""LiTI from a stored merge (`interpolate_checkpoints`: the next iteration's θ_init after an interrupted merge,
`kwarp export`) on the merge's own path: the same bytes as the LiTI written with the merge, each input
mapped and used once, outputs in recycled pieces and written by direct I/O, on real (tiny, random)
Llama checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kwarp.merger.buffers import BufferPool
from kwarp.merger.streaming import Output, interpolate_checkpoints, merge_checkpoints

from .models import load_state, perturbed, tiny_llama
from .test_merger_direct import direct_io_bypasses_the_cache, resident_pages

torch.set_num_threads(1)

ETAS = (0.0, 0.3, 0.7, 1.0)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[float, Path]]:
    """A bf16 θ_init, float32 members (as the trainer saves them: the merge is widened to float32), their
    stored SLERP, and the LiTI outputs written in the same pass as the merge."""
    root = tmp_path_factory.mktemp("interpolate")
    init = tiny_llama(root / "init", seed=0, dtype=torch.bfloat16, num_hidden_layers=4)
    members = [perturbed(init, root / f"member-{k}", seed=k + 1, dtype=torch.float32) for k in range(2)]
    outputs = {eta: root / f"with-merge-{eta}" for eta in ETAS}
    merge_checkpoints(init, members, [Output(root / "slerp", 1.0)] + [Output(f, eta) for eta, f in outputs.items()],
                      max_shard_bytes=40_000)
    return init, root / "slerp", outputs


@pytest.mark.parametrize("hold_bytes", [768 << 20, 0], ids=["held", "windowed"])
def test_a_liti_from_the_stored_merge_is_the_liti_written_with_the_merge(
    stored: tuple[Path, Path, dict[float, Path]], tmp_path: Path, hold_bytes: int
) -> None:
    init, slerp, with_merge = stored
    outputs = [Output(tmp_path / f"liti-{eta}", eta) for eta in ETAS]
    interpolate_checkpoints(init, slerp, outputs, max_shard_bytes=40_000, hold_bytes=hold_bytes, window_bytes=4096,
                            piece_elements=1000)
    for out in outputs:
        got, expected = load_state(out.folder), load_state(with_merge[out.eta])
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), (out.eta, name)
        shards = sorted(p.name for p in out.folder.glob("*.safetensors"))
        assert shards == sorted(p.name for p in with_merge[out.eta].glob("*.safetensors")) and len(shards) > 1
        for shard in shards:  # the same layout and header too: byte for byte the same files
            assert (out.folder / shard).read_bytes() == (with_merge[out.eta] / shard).read_bytes(), (out.eta, shard)


def test_a_liti_from_the_stored_merge_reads_each_input_once(
    stored: tuple[Path, Path, dict[float, Path]], tmp_path: Path
) -> None:
    init, slerp, _ = stored
    tensor_bytes = sum(t.numel() * t.element_size() for f in (init, slerp) for t in load_state(f).values())
    io = interpolate_checkpoints(init, slerp, [Output(tmp_path / "liti", 0.3), Output(tmp_path / "slerp", 1.0)])
    assert io.bytes_read == tensor_bytes  # one mapping of each tensor serves every output


def test_a_liti_from_the_stored_merge_is_written_in_recycled_pieces_by_direct_io(
    stored: tuple[Path, Path, dict[float, Path]], tmp_path: Path
) -> None:
    init, slerp, with_merge = stored
    pool = BufferPool()
    # A writer queue of 0 bytes, as in test_merger_memory: per piece size (1000 float32 elements, or a whole
    # tensor when smaller) the merged piece (given back at once: no η = 1 output) and two LiTI pieces, one
    # being written while the next is computed.
    interpolate_checkpoints(init, slerp, [Output(tmp_path / "liti", 0.3)], piece_elements=1000, buffers=pool,
                            writer_queue_bytes=0)
    sizes = {min(t.numel(), 1000) * 4 for t in load_state(init).values()}
    assert pool.allocated_bytes <= 3 * sum(sizes)
    assert pool.reused_bytes > 10 * pool.allocated_bytes
    if direct_io_bypasses_the_cache(tmp_path):  # (before anything reads the output into the page cache)
        for shard in (tmp_path / "liti").glob("*.safetensors"):
            assert resident_pages(shard)[0] == 0, shard.name
    got, expected = load_state(tmp_path / "liti"), load_state(with_merge[0.3])
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in expected)
