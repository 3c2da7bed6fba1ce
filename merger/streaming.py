"""The streaming merge engine: M + 1 checkpoints in, one or more checkpoints out, never a whole model in memory.

For each group (a transformer block, a tensor, or the model):

1. its tensors are mapped from every input's shards once (kwarp.merger.reading.GroupReader: no copy),
   their pages entered by a prefetch thread while the previous group is computed;
2. the Gram matrix of the members' task vectors is accumulated tensor by tensor and chunk by chunk
   (float32 partial products over CHUNK_ELEMENTS, summed in float64);
3. the merge method turns the Gram matrix into weights w_m (pure, see combination.py);
4. θ_merged = (1 − Σw)·θ_init + Σ w_m·θ_m is computed chunk by chunk in float32 (float64 for float64
   checkpoints) from the same tensors, rounded once to the output dtype into a recycled buffer
   (kwarp.merger.buffers), and handed, with any LiTI interpolation of it, to one PlannedShardWriter
   per output: shards laid out in advance, written on a thread of their own while the next group is
   computed, by direct I/O where the filesystem takes it (no page cache for the output), sha256 taken
   as the bytes are written (the manifest does not read the output again), the buffer given back once
   written.

interpolate_checkpoints (LiTI from a stored merge) runs the same loop with the stored merge as the only
member and a fixed weight of 1 (no Gram pass).

Writing the merge as a weighted sum of the checkpoints (not θ_init + Σ w δ) keeps the endpoints
exact: at λ = 0 or 1 a single term with weight 1 remains and the member is copied bit for bit.

A group larger than hold_bytes over all inputs (a 128k-vocabulary embedding is 1 GB per input in
bf16) is not held: its tensors are walked twice in memory-mapped windows of WINDOW_BYTES
(kwarp.merger.reading.WindowReader), re-fetched per window so that mapped pages never exceed one
window per input. Peak memory is therefore about

    2 · hold_bytes (this group and the next, mapped page cache) + outputs · (writer queue (64 MiB)
    + two pieces of PIECE_ELEMENTS or one window + the writer's 8 MiB staging buffer for direct I/O)
    + idle recycled output buffers (256 MiB)
    + threads · a few MiB of scratch

independent of the model's size. Chunks are shared out between worker threads whole, each thread
running single-threaded torch operations (torch releases the GIL inside them); the result does not
depend on the number of threads. Tensors that are not floating point (integer buffers, masks) are
copied from θ_init and left out of the angles.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open

from kwarp.core.checkpoints import DEFAULT_MAX_SHARD_BYTES, CheckpointError
from kwarp.core.weights import copy_non_weight_files, shard_map
from kwarp.merger.buffers import BufferPool
from kwarp.merger.chunked import Workers, gram_part, merge_part
from kwarp.merger.combination import Combination, MergeMethod, step_lambdas
from kwarp.merger.groups import Granularity, group_names
from kwarp.merger.liti import check_eta
from kwarp.merger.methods import get_method
from kwarp.merger.reading import WINDOW_BYTES, GroupReader, Held, WindowReader, readable
from kwarp.merger.report import GroupReport, IOStats, MergeReport
from kwarp.merger.writer import Planned, PlannedShardWriter

# 256 Ki elements: the float32 scratch of one chunk (1 MiB per buffer) stays in cache, and the
# per-chunk Python overhead is negligible next to the arithmetic (of 256 Ki, 1 Mi and 4 Mi elements,
# the fastest on a 2-core VM).
CHUNK_ELEMENTS = 1 << 18
# A group whose tensors over all M + 1 inputs fit in this many bytes is held in memory and read once;
# a larger one (a 128k-vocabulary embedding) is streamed in windows and read twice. With the next group
# prefetched while this one is computed, up to twice this is held.
HOLD_BYTES = 768 << 20
# Computed tensors waiting for a writer thread, per output. The writer gives their buffers back once written
# (kwarp.merger.buffers); what waits longer is allocated afresh. On the 2-core VM, 256 MiB let the engine
# run ahead of the disk by two blocks and allocate 366 MiB of fresh buffers for a 463 MiB output; 64 MiB:
# 233 MiB, most of it the 82 MB embedding and head of the benchmark model, and 30% fewer page faults.
WRITER_QUEUE_BYTES = 64 << 20
# A held group's merged tensors are computed and written in pieces of this many elements (8 MiB in bf16),
# each in a recycled buffer: the output side holds a few pieces instead of whole tensors (an 82 MB
# embedding of the benchmark model, 1 GB of a 128k-vocabulary model's).
PIECE_ELEMENTS = 4 << 20

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}

Progress = Callable[[int, int], None]  # (bytes just processed, total bytes of work)


@dataclass(frozen=True)
class Output:
    """One checkpoint the engine writes: LiTI at η (1 = the merge itself, 0 = θ_init) into `folder`.

    The engine writes the weights and copies config and tokenizer from θ_init; the caller writes the
    manifest (kwarp.core.checkpoints.staging + write_manifest, or Store.write_checkpoint).
    """

    folder: Path
    eta: float = 1.0


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype tag: BF16, F32, I64, ...
    shape: tuple[int, ...]
    merged: str = ""  # dtype tag of the merge: the widest float dtype of θ_init and the members

    @property
    def mergeable(self) -> bool:
        return self.dtype in _DTYPES

    @property
    def merged_dtype(self) -> torch.dtype:
        return _DTYPES[self.merged or self.dtype]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def describe(folder: Path) -> dict[str, TensorInfo]:
    """Name -> dtype and shape of every tensor, from the safetensors headers (no data is read)."""
    out: dict[str, TensorInfo] = {}
    for shard, names in shard_map(folder).items():
        with safe_open(Path(folder) / shard, framework="pt") as f:
            for name in names:
                s = f.get_slice(name)
                out[name] = TensorInfo(s.get_dtype(), tuple(s.get_shape()))
    return out


def check_compatible(init: Path, members: Sequence[Path]) -> dict[str, TensorInfo]:
    """The tensors of θ_init, with the dtype of their merge; CheckpointError if a member does not match.

    Names and shapes must be θ_init's. Floating-point dtypes may differ: the trainer saves members in
    float32 (a task vector at learning rate 1e-6 rounds away in bf16) while θ_sft is often bf16, and
    the merge is then written in the wider dtype. Other dtypes must be θ_init's.
    """
    if not members:
        raise CheckpointError("a merge needs at least one member checkpoint")
    reference = describe(init)
    widest = {name: _DTYPES[i.dtype] for name, i in reference.items() if i.mergeable}
    for member in members:
        info = describe(member)
        missing = sorted(set(reference) - set(info))
        extra = sorted(set(info) - set(reference))
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensor(s) of θ_init, e.g. {', '.join(missing[:3])}")
        if extra:
            problems.append(f"has {len(extra)} tensor(s) θ_init lacks, e.g. {', '.join(extra[:3])}")
        for name in sorted(set(reference) & set(info)):
            ref, got = reference[name], info[name]
            if ref.shape != got.shape:
                problems.append(f"'{name}' has shape {list(got.shape)}, θ_init has {list(ref.shape)}")
            elif ref.dtype != got.dtype and not (ref.mergeable and got.mergeable):
                problems.append(f"'{name}' is {got.dtype}, θ_init has {ref.dtype}")
            elif name in widest:
                widest[name] = torch.promote_types(widest[name], _DTYPES[got.dtype])
            if len(problems) >= 5:
                break
        if problems:
            raise CheckpointError(
                f"{member} does not match θ_init {init}: " + "; ".join(problems)
                + ". Members must be fine-tuned from this θ_init (same architecture and tensors)."
            )
    tags = {dtype: tag for tag, dtype in _DTYPES.items()}
    return {name: replace(i, merged=tags[widest[name]] if name in widest else i.dtype) for name, i in reference.items()}


_CONFIG_DTYPE_KEYS = ("dtype", "torch_dtype")  # transformers 5 writes `dtype`, earlier versions `torch_dtype`


def _copy_non_weight_files(init: Path, out: Output, infos: dict[str, TensorInfo]) -> None:
    """Config and tokenizer from θ_init; the config's dtype follows the weights when the merge widened them."""
    copy_non_weight_files(init, out.folder)
    merged = {infos[n].merged_dtype for n in infos if infos[n].mergeable}
    original = {_DTYPES[infos[n].dtype] for n in infos if infos[n].mergeable}
    config = Path(out.folder) / "config.json"
    if out.eta == 0.0 or len(merged) != 1 or merged == original or not config.is_file():
        return
    doc = json.loads(config.read_text())
    name = str(next(iter(merged))).removeprefix("torch.")
    if any(k in doc for k in _CONFIG_DTYPE_KEYS):
        config.write_text(json.dumps({k: name if k in _CONFIG_DTYPE_KEYS else v for k, v in doc.items()}, indent=2) + "\n")


def _weight_bytes(folder: Path) -> int:
    """Size of a checkpoint's safetensors files (tensor data plus their small headers)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def merge_checkpoints(
    init: Path,
    members: Sequence[Path],
    outputs: Sequence[Output] = (),
    *,
    method: str | MergeMethod = "slerp",
    lam: float | None = None,
    granularity: Granularity = "layer",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    chunk_elements: int = CHUNK_ELEMENTS,
    window_bytes: int = WINDOW_BYTES,
    hold_bytes: int = HOLD_BYTES,
    threads: int = 1,
    progress: Progress | None = None,
    writer_queue_bytes: int = WRITER_QUEUE_BYTES,
    piece_elements: int = PIECE_ELEMENTS,
    buffers: BufferPool | None = None,
    direct_writes: bool = True,
) -> MergeReport:
    """Merge the members' task vectors relative to θ_init group by group and write `outputs`.

    With no outputs only the report is computed (one pass over the inputs). The result does not
    depend on `threads` (chunks are shared out whole and summed in order). Computed tensors are held in
    `buffers` (a fresh pool by default), piece_elements at a time, until written. With `direct_writes`, the
    outputs are written by direct I/O where the filesystem takes it (kwarp.merger.writer).
    """
    started = time.perf_counter()
    merge_method = get_method(method) if isinstance(method, str) else method
    for out in outputs:
        check_eta(out.eta)
    init, members = Path(init), [Path(m) for m in members]
    infos = check_compatible(init, members)
    settings = _Settings(max_shard_bytes, chunk_elements, window_bytes, hold_bytes, threads, writer_queue_bytes,
                         piece_elements, direct_writes)
    reports, bytes_read = _stream(init, members, outputs, infos, group_names(infos, granularity), settings,
                                  buffers, lambda gram: merge_method.combine(gram, lam), progress)
    io = IOStats(
        input_bytes=sum(_weight_bytes(f) for f in (init, *members)),
        bytes_read=bytes_read,
        bytes_written=sum(_weight_bytes(o.folder) for o in outputs),
        seconds=time.perf_counter() - started,
    )
    return MergeReport(
        method=merge_method.name,
        granularity=granularity,
        members=len(members),
        step_lambdas=tuple(step_lambdas(len(members), lam)),
        groups=tuple(reports),
        io=io,
        outputs=tuple({"eta": o.eta, "location": str(o.folder)} for o in outputs),
        inputs={"init": str(init), "members": [str(p) for p in members]},
    )


def interpolate_checkpoints(
    init: Path,
    merged: Path,
    outputs: Sequence[Output],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    threads: int = 1,
    hold_bytes: int = HOLD_BYTES,
    window_bytes: int = WINDOW_BYTES,
    piece_elements: int = PIECE_ELEMENTS,
    writer_queue_bytes: int = WRITER_QUEUE_BYTES,
    buffers: BufferPool | None = None,
    direct_writes: bool = True,
) -> IOStats:
    """LiTI between θ_init and a stored merge (the merge is not recomputed), on the merge's own path.

    The stored merge is the single "member" of a combination with weight 1 (θ_merged = 1·merged + 0·θ_init,
    copied through the float scratch, exact), so a LiTI output here is computed exactly as
    merge_checkpoints computes one from the merge it has just rounded: mapped inputs, read once, pieces
    in recycled buffers, direct writes; the two are equal bit for bit. No Gram matrix is computed.
    """
    started = time.perf_counter()
    for out in outputs:
        check_eta(out.eta)
    init, merged = Path(init), Path(merged)
    infos = check_compatible(init, [merged])
    settings = _Settings(max_shard_bytes, CHUNK_ELEMENTS, window_bytes, hold_bytes, threads, writer_queue_bytes,
                         piece_elements, direct_writes)
    stored = Combination(weights=(1.0,), steps=())
    _, bytes_read = _stream(init, [merged], outputs, infos, group_names(infos, "layer"), settings, buffers,
                            None, None, fixed=stored)
    return IOStats(
        input_bytes=_weight_bytes(init) + _weight_bytes(merged),
        bytes_read=bytes_read,
        bytes_written=sum(_weight_bytes(o.folder) for o in outputs),
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class _Settings:
    max_shard_bytes: int
    chunk_elements: int
    window_bytes: int
    hold_bytes: int
    threads: int
    writer_queue_bytes: int
    piece_elements: int
    direct_writes: bool


def _stream(
    init: Path,
    members: Sequence[Path],
    outputs: Sequence[Output],
    infos: dict[str, TensorInfo],
    groups: dict[str, list[str]],
    settings: _Settings,
    buffers: BufferPool | None,
    combine: Callable[[list[list[float]]], Combination] | None,
    progress: Progress | None,
    *,
    fixed: Combination | None = None,
) -> tuple[list[GroupReport], int]:
    """Compute and write `outputs` group by group: the Gram pass and `combine` per group, or the `fixed`
    combination for every group (no Gram pass, no group reports). Returns the group reports and the input
    bytes read."""
    m = len(members)

    def nbytes(name: str) -> int:  # of θ_init's tensor: a measure of work for the progress bar
        info = infos[name]
        return info.numel * _element_size(info.dtype)

    float_bytes = sum(nbytes(n) for n in infos if infos[n].mergeable)
    total_work = (m + 1) * float_bytes * (fixed is None) + (sum(nbytes(n) for n in infos) if outputs else 0)

    inputs = WindowReader([init, *members], settings.window_bytes)
    held = GroupReader([init, *members])
    buffers = buffers if buffers is not None else BufferPool()
    workers = Workers(settings.threads, m, settings.chunk_elements)
    order = [n for names in groups.values() for n in names]
    writers = [PlannedShardWriter(o.folder, _planned(order, infos, o), settings.max_shard_bytes,
                                  queue_bytes=settings.writer_queue_bytes, direct=settings.direct_writes)
               for o in outputs]
    # One thread maps the next held group and enters its pages while the workers compute this one (madvise
    # through ctypes releases the GIL; on a cold disk that is where the reading happens).
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="kwarp-merge-read")

    def read(names: list[str]) -> Held | None:
        if held.nbytes(names) > settings.hold_bytes or not all(readable(infos[n].dtype) for n in names):
            return None
        return held.read(names)

    reports = []
    try:
        pending = [prefetch.submit(read, names) for names in list(groups.values())[:1]]
        group_list = list(groups.items())
        for k, (group, names) in enumerate(group_list):
            group_held = pending.pop(0).result()
            tensors = group_held.tensors if group_held is not None else None
            if k + 1 < len(group_list):
                pending.append(prefetch.submit(read, group_list[k + 1][1]))
            float_names = [n for n in names if infos[n].mergeable]
            if fixed is not None:
                combination = fixed
            else:
                assert combine is not None
                gram = torch.zeros(m, m, dtype=torch.float64)
                for name in float_names:
                    if tensors is not None:
                        views = [t[name].reshape(-1) for t in tensors]
                        gram += _gram_of_views(views, workers)
                    else:
                        for _, _, views in inputs.windows(name):
                            gram += _gram_of_views(views, workers)
                    if progress:
                        progress((m + 1) * nbytes(name), total_work)
                gram = (gram + gram.t()) / 2  # the two triangles' float32 products may differ in the last bit
                _check_finite(gram, group, members)
                combination = combine(gram.tolist())
                if float_names:  # a group of integer buffers only is copied and has no angle to report
                    params = sum(infos[n].numel for n in float_names)
                    reports.append(GroupReport.from_gram(group, len(float_names), params, gram.tolist(), combination))
            for name in names if outputs else ():
                if tensors is not None:
                    _write_held(name, infos[name], [t[name] for t in tensors], combination, outputs, writers, workers,
                                buffers, settings.piece_elements)
                else:
                    _write_tensor(name, infos[name], inputs, combination, outputs, writers, workers, buffers)
                if progress:
                    progress(nbytes(name), total_work)
            del tensors
            if group_held is not None:
                held.release(group_held)  # its mappings go once the writers hold no copy of its tensors
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        held.close()
        workers.close()
    for out in outputs:
        _copy_non_weight_files(init, out, infos)
    return reports, inputs.bytes_read + held.bytes_read


def _planned(order: Sequence[str], infos: dict[str, TensorInfo], out: Output) -> list[Planned]:
    """The tensors of one output in the order the engine computes them: a merge is in the merged dtype."""
    return [
        Planned(n, infos[n].merged or infos[n].dtype if infos[n].mergeable and out.eta > 0.0 else infos[n].dtype,
                infos[n].shape)
        for n in order
    ]


def _gram_of_views(views: Sequence[torch.Tensor], workers: Workers) -> torch.Tensor:
    parts = workers.run(views[0].numel(), partial(gram_part, views))
    return torch.cat(parts).to(torch.float64).sum(0)


def _computed(info: TensorInfo, outputs: Sequence[Output]) -> list[int]:
    """Indices of the outputs whose tensor is computed (a merge or a LiTI), not θ_init's own tensor."""
    return [k for k, o in enumerate(outputs) if o.eta > 0.0] if info.mergeable and info.numel else []


def _write_uncomputed(name: str, info: TensorInfo, init: torch.Tensor | None, outputs: Sequence[Output],
                      writers: Sequence[PlannedShardWriter], computed: list[int]) -> None:
    """θ_init's own tensor to the η = 0 outputs (and every output of a non-float tensor), whole."""
    for k, (out, writer) in enumerate(zip(outputs, writers, strict=True)):
        if k not in computed:
            whole = init if out.eta == 0.0 or not info.mergeable else torch.empty(info.shape, dtype=info.merged_dtype)
            assert whole is not None
            writer.write(name, whole)


def _write_piece(
    name: str, dtype: torch.dtype, size: int, terms: Sequence[torch.Tensor | None], combination: Combination,
    outputs: Sequence[Output], computed: list[int], writers: Sequence[PlannedShardWriter], workers: Workers,
    buffers: BufferPool,
) -> None:
    """The merge (and LiTI) of one piece of a tensor from the same piece of each input (flat `terms`), computed
    in buffers of `size` elements taken from `buffers` and handed to the writers, which give them back."""
    n = next(t for t in terms if t is not None).numel()
    merged_buffer = buffers.take(dtype, (size,))
    liti_buffers = {k: buffers.take(dtype, (size,)) for k in computed if outputs[k].eta < 1.0}
    merged = merged_buffer[:n]
    litis = [(b[:n], outputs[k].eta) for k, b in liti_buffers.items()]
    workers.run(n, partial(merge_part, merged, terms, combination, litis))
    merged_users = sum(1 for k in computed if outputs[k].eta == 1.0)
    merged_written = buffers.after(merged_buffer, merged_users) if merged_users else None
    if not merged_users:  # only LiTI outputs needed it, and they are computed
        buffers.give(merged_buffer)
    for k in computed:
        if outputs[k].eta == 1.0:
            writers[k].write_piece(name, merged, merged_written)
        else:
            writers[k].write_piece(name, liti_buffers[k][:n], buffers.after(liti_buffers[k], 1))


def _write_held(
    name: str,
    info: TensorInfo,
    tensors: Sequence[torch.Tensor],
    combination: Combination,
    outputs: Sequence[Output],
    writers: Sequence[PlannedShardWriter],
    workers: Workers,
    buffers: BufferPool,
    piece_elements: int,
) -> None:
    """Tensor `name` of every output, from the inputs' tensors mapped in memory (θ_init first).

    A computed tensor is computed and written piece by piece (piece_elements at a time) in recycled
    buffers that the writers give back once written: the output side holds a few pieces, never a
    whole tensor. θ_init's own tensor (η = 0 outputs, non-float tensors) goes to the writer as the
    mapped view itself, no copy.
    """
    computed = _computed(info, outputs)
    _write_uncomputed(name, info, tensors[0], outputs, writers, computed)
    if not computed:
        return
    weights = (combination.init_weight, *combination.weights)
    terms = [t.reshape(-1) if w != 0.0 or i == 0 else None for i, (w, t) in enumerate(zip(weights, tensors, strict=True))]
    size = min(info.numel, piece_elements)  # buffers of a piece, or of the whole tensor when it is smaller
    for s in range(0, info.numel, size):
        e = min(info.numel, s + size)
        _write_piece(name, info.merged_dtype, size, [t[s:e] if t is not None else None for t in terms], combination,
                     outputs, computed, writers, workers, buffers)


def _write_tensor(
    name: str,
    info: TensorInfo,
    inputs: WindowReader,
    combination: Combination,
    outputs: Sequence[Output],
    writers: Sequence[PlannedShardWriter],
    workers: Workers,
    buffers: BufferPool,
) -> None:
    """Tensor `name` of every output, from the inputs walked in memory-mapped windows (a group too large to
    hold): each window's merge is a piece of the output, computed in recycled buffers like a held group's."""
    computed = _computed(info, outputs)
    if computed:
        # Only inputs with a non-zero weight are read (and θ_init): λ = 0 or 1 reads one member.
        weights = (combination.init_weight, *combination.weights)
        used = sorted({0} | {i for i, w in enumerate(weights) if w != 0.0})
        size = 0
        for start, end, views in inputs.windows(name, used):
            size = size or end - start  # every window but the last has the first one's length
            by_index = dict(zip(used, views, strict=True))
            _write_piece(name, info.merged_dtype, size, [by_index.get(i) for i in range(len(weights))], combination,
                         outputs, computed, writers, workers, buffers)
    # θ_init's own tensor, unchanged: η = 0 outputs and non-float tensors are copies, not computations.
    if len(computed) < len(outputs):
        with inputs.whole(name, [0]) as (init,):
            _write_uncomputed(name, info, init, outputs, writers, computed)


_ELEMENT_SIZES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _element_size(dtype_tag: str) -> int:
    return _ELEMENT_SIZES.get(dtype_tag, 1)  # BOOL, I8, U8 and the float8 formats


def _check_finite(gram: torch.Tensor, group: str, members: Sequence[Path]) -> None:
    if torch.isfinite(gram).all():
        return
    bad = [str(members[i]) for i in range(gram.shape[0]) if not torch.isfinite(gram[i, i])]
    raise CheckpointError(
        f"the task vector of {', '.join(bad) or 'a member'} is not finite (NaN or inf) in '{group}': "
        "the run diverged; retrain that member or merge without it"
    )

