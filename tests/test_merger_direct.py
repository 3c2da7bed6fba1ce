"""The merge's output written by direct I/O: no page-cache page allocated for it where the filesystem takes
O_DIRECT, the bytes exactly those of a buffered write whatever the filesystem accepts, on real (tiny,
random) Llama checkpoints and the real filesystem of the test's temporary folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
from pathlib import Path

import pytest
import torch

from kwarp.core.checkpoints import DIGESTS
from kwarp.merger.streaming import Output, merge_checkpoints
from kwarp.merger.writer import STAGING_BYTES, Planned, PlannedShardWriter, _Staging

from .models import load_state, perturbed, tiny_llama

torch.set_num_threads(1)

_LIBC = ctypes.CDLL(None, use_errno=True)
_PAGE = mmap.PAGESIZE


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages of the file), from mincore(2) on a mapping that is never read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # mapping enters no page
    try:
        anchor = ctypes.c_char.from_buffer(mapping)
        pages = (size + _PAGE - 1) // _PAGE
        vec = (ctypes.c_ubyte * pages)()
        if _LIBC.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        del anchor
        return sum(v & 1 for v in vec), pages
    finally:
        mapping.close()


def direct_io_bypasses_the_cache(folder: Path) -> bool:
    """Whether this filesystem takes O_DIRECT writes and keeps them out of the page cache (tmpfs takes them
    into memory: there the page cache is the file)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / "direct-probe"
    block = mmap.mmap(-1, 4 * _PAGE)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        try:
            os.write(fd, block)
        finally:
            os.close(fd)
        return resident_pages(probe)[0] == 0
    except OSError:
        return False
    finally:
        block.close()
        probe.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A 6-block Llama and two members, in bf16 like most released checkpoints."""
    init = tiny_llama(tmp_path_factory.mktemp("deep") / "init", seed=0, dtype=torch.bfloat16, num_hidden_layers=6)
    return init, [perturbed(init, init.parent / f"member-{k}", seed=k + 1) for k in range(2)]


def test_merge_outputs_leave_no_page_in_the_page_cache_where_direct_io_is_taken(
    deep: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    if not direct_io_bypasses_the_cache(tmp_path):
        pytest.skip(f"the filesystem of {tmp_path} does not take direct I/O past its page cache")
    init, members = deep
    outputs = [Output(tmp_path / "slerp", 1.0), Output(tmp_path / "liti", 0.3), Output(tmp_path / "init", 0.0)]
    merge_checkpoints(init, members, outputs, max_shard_bytes=30_000)  # several shards, odd sizes
    buffered = [Output(tmp_path / f"buffered-{k}", o.eta) for k, o in enumerate(outputs)]
    merge_checkpoints(init, members, buffered, max_shard_bytes=30_000, direct_writes=False)
    for out, ref in zip(outputs, buffered, strict=True):
        shards = sorted(out.folder.glob("*.safetensors"))
        assert len(shards) > 1
        for shard in shards:
            cached, pages = resident_pages(shard)
            assert cached == 0, f"{shard.name}: {cached} of {pages} pages in the page cache"
            assert shard.read_bytes() == (ref.folder / shard.name).read_bytes(), shard.name
        # the buffered reference went through the page cache: the check above can see cached pages
        assert resident_pages(next(ref.folder.glob("*.safetensors")))[0] > 0


@pytest.mark.parametrize("block,staging", [(4096, STAGING_BYTES), (4096, 128 << 10), (4096, 8192), (256, 768),
                                           (512, 512)])
def test_a_direct_writer_writes_exactly_the_bytes_of_a_buffered_one(tmp_path: Path, block: int, staging: int) -> None:
    """Tensors of odd byte sizes, tensors larger than the staging buffer, pieces, several shards; large runs of
    bytes are staged by memmove (from 64 KiB), small ones by memoryview. A block of 256 bytes (768 staged) is
    below the 512-byte sector of common disks: the filesystem refuses that direct write and the writer goes on
    buffered; where it is taken (tmpfs) it is written directly. Either way the files and their recorded
    sha256 must be exact."""
    planned = [Planned("a", "F32", (3, 7)), Planned("b", "BF16", (1001,)), Planned("c", "U8", (5,)),
               Planned("d", "F32", (40, 50)), Planned("e", "BF16", (0,)), Planned("f", "I64", (3,)),
               Planned("g", "F32", (300, 170))]
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 7, generator=gen), "b": torch.randn(1001, generator=gen).to(torch.bfloat16),
        "c": torch.arange(5, dtype=torch.uint8), "d": torch.randn(40, 50, generator=gen),
        "e": torch.empty(0, dtype=torch.bfloat16), "f": torch.tensor([1, -2, 3]),
        "g": torch.randn(300, 170, generator=gen),  # 204 000 bytes: memmove, across 128 KiB staging buffers
    }
    folders = {}
    for mode in ("buffered", "direct"):
        folder = folders[mode] = tmp_path / mode
        writer = PlannedShardWriter(folder, planned, max_shard_bytes=6000 if staging < 64 << 10 else 100_000, queue_bytes=0,
                                    direct=mode == "direct", direct_block=block, staging_bytes=staging)
        for p in planned:
            if p.name == "d":  # in pieces, one larger than the staging buffer
                flat = tensors["d"].reshape(-1)
                writer.write_piece("d", flat[:1500])
                writer.write_piece("d", flat[1500:])
            else:
                writer.write(p.name, tensors[p.name])
        writer.close()
        if mode == "buffered":
            assert writer.direct_shards == []
    shards = sorted(p.name for p in folders["buffered"].glob("*.safetensors"))
    assert len(shards) > 1
    assert shards == sorted(p.name for p in folders["direct"].glob("*.safetensors"))
    for name in shards:
        data = (folders["direct"] / name).read_bytes()
        assert data == (folders["buffered"] / name).read_bytes(), name
        recorded = (folders["direct"] / DIGESTS).read_text()
        assert hashlib.sha256(data).hexdigest() in recorded, name
    got = load_state(folders["direct"])
    assert all(torch.equal(got[n], t) for n, t in tensors.items())


def _huge_page_kib(address: int) -> int:
    """AnonHugePages (KiB) of the mapping of this process that holds `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_the_staging_buffer_is_in_huge_pages_where_the_kernel_has_them() -> None:
    """Each direct write pins the staging buffer's pages: 4 huge pages per 8 MiB instead of 2048 small ones (a
    fifth of the CPU time, and twice the disk's speed, for 480 MiB on the 2-core VM)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().split("[")[1].split("]")[0] if thp.is_file() else "absent"
    if mode not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages: {mode}")
    staging = _Staging(STAGING_BYTES)
    try:
        ctypes.memset(staging.address, 1, STAGING_BYTES)  # its pages are allocated as it is first written
        assert _huge_page_kib(staging.address) >= 2048
    finally:
        staging.close()
