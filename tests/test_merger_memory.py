"""The merge's memory: inputs mapped from their shards (not copied), outputs computed and written in a few
recycled pieces, truncated inputs refused instead of crashing the process, on real (tiny, random) Llama
checkpoints.

Expected merges come from a merge with recycling made impossible (a pool that keeps nothing), so the
tests see that a recycled buffer is never handed out while a writer still needs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kwarp.core.checkpoints import CheckpointError
from kwarp.core.weights import shard_map
from kwarp.merger.buffers import BufferPool
from kwarp.merger.reading import GroupReader
from kwarp.merger.streaming import Output, merge_checkpoints
from kwarp.merger.writer import Planned, PlannedShardWriter

from .models import load_state, perturbed, tiny_llama

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A 6-block Llama and two members, in bf16 like most released checkpoints."""
    init = tiny_llama(tmp_path_factory.mktemp("deep") / "init", seed=0, dtype=torch.bfloat16, num_hidden_layers=6)
    return init, [perturbed(init, init.parent / f"member-{k}", seed=k + 1) for k in range(2)]


def _rchar() -> int:
    """rchar of /proc/self/io: bytes this process asked read()/pread() for (page cache included)."""
    return next(int(line.split()[1]) for line in Path("/proc/self/io").read_text().splitlines()
                if line.startswith("rchar:"))


def _tensor_bytes(folder: Path) -> int:
    return sum(t.numel() * t.element_size() for t in load_state(folder).values())


def test_inputs_are_mapped_not_copied(deep: tuple[Path, list[Path]], tmp_path: Path) -> None:
    init, members = deep
    one_input = _tensor_bytes(init)
    before = _rchar()
    report = merge_checkpoints(init, members, [Output(tmp_path / "slerp", 1.0)])
    # Headers, config and tokenizer are read; the tensors of the three inputs are mapped, not read into copies.
    assert _rchar() - before < one_input / 2
    assert report.io.bytes_read == 3 * one_input  # each tensor used once (the Gram matrix and the sum share it)


def test_a_group_is_unmapped_by_the_engine_once_computed(deep: tuple[Path, list[Path]]) -> None:
    init, members = deep
    reader = GroupReader([init, *members])
    names = [n for n in load_state(init) if n.startswith("model.layers.0.")]
    held = reader.read(names)
    assert reader.mapped_bytes == reader.nbytes(names) == 3 * sum(t.numel() * 2 for t in held.tensors[0].values())
    assert torch.equal(held.tensors[1]["model.layers.0.mlp.up_proj.weight"],
                       load_state(members[0])["model.layers.0.mlp.up_proj.weight"])
    reader.release(held)
    assert reader.mapped_bytes == 0 and held.tensors == []
    reader.close()


def test_outputs_are_computed_in_a_few_recycled_pieces_whatever_the_model(
    deep: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    init, members = deep
    pool = BufferPool()
    outputs = [Output(tmp_path / "slerp", 1.0), Output(tmp_path / "liti", 0.3)]
    # A writer queue of 0 bytes: the engine hands a writer its next piece once the last one is written, so
    # per output one piece is being written while the next is computed: two buffers of each piece size
    # (100 bf16 elements, or a whole tensor when smaller: the norms' 32).
    merge_checkpoints(init, members, outputs, writer_queue_bytes=0, piece_elements=100, buffers=pool)
    sizes = {min(t.numel(), 100) * 2 for t in load_state(init).values()}
    assert sizes == {200, 64}
    assert pool.allocated_bytes <= 2 * 2 * sum(sizes)  # for a model of 6 blocks and 0.13 MB per output
    assert pool.reused_bytes > 100 * pool.allocated_bytes
    # Nothing was handed out again while a writer still needed it: the same merge without recycling, whole.
    whole = [Output(tmp_path / "slerp-whole", 1.0), Output(tmp_path / "liti-whole", 0.3)]
    merge_checkpoints(init, members, whole, piece_elements=1 << 30, buffers=BufferPool(idle_bytes=0))
    for out, fresh in zip(outputs, whole, strict=True):
        got, expected = load_state(out.folder), load_state(fresh.folder)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name


def test_a_streamed_group_is_written_window_by_window_in_recycled_buffers(
    deep: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Groups too large to hold (hold_bytes=0 here) are walked in mapped windows: each window's merge is a
    piece of the output, so the output side never holds a whole tensor (a 1 GB embedding of a 128k vocabulary)."""
    init, members = deep
    pool = BufferPool()
    outputs = [Output(tmp_path / "slerp", 1.0), Output(tmp_path / "liti", 0.3), Output(tmp_path / "init", 0.0)]
    streamed = {"hold_bytes": 0, "window_bytes": 1000}  # windows of 500 bf16 elements
    merge_checkpoints(init, members, outputs, writer_queue_bytes=0, buffers=pool, **streamed)
    sizes = {min(t.numel(), 500) * 2 for t in load_state(init).values()}
    assert pool.allocated_bytes <= 2 * 2 * sum(sizes)
    assert pool.reused_bytes > 10 * pool.allocated_bytes
    fresh = [Output(tmp_path / "slerp-fresh", 1.0), Output(tmp_path / "liti-fresh", 0.3), Output(tmp_path / "init-fresh", 0.0)]
    merge_checkpoints(init, members, fresh, buffers=BufferPool(idle_bytes=0), **streamed)
    for out, expected_out in zip(outputs, fresh, strict=True):
        got, expected = load_state(out.folder), load_state(expected_out.folder)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name
    assert all(torch.equal(t, load_state(init)[n]) for n, t in load_state(outputs[2].folder).items())


def test_a_writer_takes_a_tensor_in_pieces_that_are_exactly_its_bytes(tmp_path: Path) -> None:
    planned = [Planned("a", "F32", (2, 3)), Planned("b", "BF16", (4,))]
    a, b = torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.ones(4, dtype=torch.bfloat16)
    whole = PlannedShardWriter(tmp_path / "whole", planned, max_shard_bytes=1 << 20)
    whole.write("a", a)
    whole.write("b", b)
    whole.close()
    pieces = PlannedShardWriter(tmp_path / "pieces", planned, max_shard_bytes=1 << 20, queue_bytes=0)
    given_back: list[int] = []
    pieces.write_piece("a", a.reshape(-1)[:4], lambda t: given_back.append(t.numel()))
    with pytest.raises(CheckpointError, match="does not fit"):
        pieces.write_piece("a", a.reshape(-1)[:4])  # 4 more elements of a tensor that has 2 left
    with pytest.raises(CheckpointError, match="after pieces"):
        pieces.write("a", a)
    pieces.write_piece("a", a.reshape(-1)[4:], lambda t: given_back.append(t.numel()))
    pieces.write("b", b)
    pieces.close()
    assert given_back == [4, 2]
    shards = sorted(p.name for p in (tmp_path / "whole").glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in (tmp_path / "pieces").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "pieces" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_pool_keeps_at_most_its_idle_bytes_the_latest_first() -> None:
    pool = BufferPool(idle_bytes=100)
    a, b, c = (pool.take(torch.uint8, (40,)) for _ in range(3))
    assert pool.allocated_bytes == 120
    for t in (a, b, c):
        pool.give(t)
    assert pool.held_bytes == 80  # the oldest (a) went
    again = pool.take(torch.bfloat16, (4, 5))  # 40 bytes: a kept buffer, the latest given back
    assert again.untyped_storage().data_ptr() == c.untyped_storage().data_ptr()
    assert pool.allocated_bytes == 120 and pool.reused_bytes == 40 and pool.held_bytes == 40
    done = pool.after(again, users=2)
    done(again)
    assert pool.held_bytes == 40  # one writer still has it
    done(again)
    assert pool.held_bytes == 80


def test_an_input_truncated_during_the_merge_is_refused_not_mapped(
    deep: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """A mapped page past the end of a file kills the process with SIGBUS: the reader checks the size first.

    (safetensors refuses a file shorter than its header says when the merge starts; this is a file cut after.)
    """
    init, members = deep
    cut = tmp_path / "member-cut"
    cut.mkdir()
    for f in members[1].iterdir():
        (cut / f.name).write_bytes(f.read_bytes())
    reader = GroupReader([init, members[0], cut])  # headers parsed: the files were whole
    shard = cut / next(iter(shard_map(cut)))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 4096])
    with pytest.raises(CheckpointError, match="truncated"):
        reader.read(list(load_state(init)))
    reader.close()
