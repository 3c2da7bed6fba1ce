"""`kwarp merge`: SLERP of the members' task vectors, then LiTI. Two modes.

Folder tool (any Hugging Face checkpoints fine-tuned from one θ_init):

    kwarp merge --init DIR --member DIR --member DIR [--lambda L] [--eta E]
                [--granularity layer|tensor|model] [--method slerp|linear] --out DIR

writes one complete checkpoint: the merge (η = 1, the default) or its LiTI towards θ_init.

Task mode (what the plan starts, locally or as the Job `<run>-i<I>-merge`):

    kwarp merge --iteration I [--spec FILE]

reads θ_init(I) and the M member finals from the run's store, writes slerp(I), then, unless I is the
last iteration, θ_init(I+1) = LiTI(θ_init, θ_slerp, η = spec.warp.litiEta), and merge.json last.
Outputs that are already complete are not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Nothing imported here imports torch: `kwarp merge --help` and argument errors answer at once, and a merge
# imports torch and the engine in configure_threads, the first thing it does (kwarp.merger.startup).
from kwarp.core.checkpoints import DEFAULT_MAX_SHARD_BYTES
from kwarp.core.errors import UserError
from kwarp.merger.groups import GRANULARITIES, Granularity
from kwarp.merger.methods import METHODS

if TYPE_CHECKING:
    from rich.console import Console

    from kwarp.core.spec import WarpRun
    from kwarp.merger.report import MergeReport
    from kwarp.merger.streaming import Progress

_SUMMARY_ROWS = 40
_FOLDER_FLAGS = ("init", "member", "out", "lam", "eta", "granularity", "method", "report")
# The merge is a stream of cache-sized elementwise operations. The engine shares each window out
# between its own worker threads, each running single-threaded torch operations: torch's intra-op
# pool (sized to every core of the node, not to the pod's CPU quota) made its threads wait on each
# other and ran up to 10x slower on a shared 2-core VM. Beyond a few threads the
# merge is bound by memory bandwidth.
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, usable))


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "modes:\n"
        "  task:   kwarp merge --iteration I [--spec FILE]\n"
        "  folder: kwarp merge --init DIR --member DIR --member DIR [...] --out DIR\n"
    )
    task = parser.add_argument_group("task mode (a WarpRun's merge)")
    task.add_argument("--iteration", type=int, help="0-based iteration whose members to merge")
    task.add_argument("--spec", help="WarpRun document (default: $KWARP_SPEC)")
    folder = parser.add_argument_group("folder mode (any checkpoints of one θ_init)")
    folder.add_argument("--init", type=Path, help="θ_init: the checkpoint the members were trained from")
    folder.add_argument("--member", type=Path, action="append", default=[], help="a member checkpoint (repeat)")
    folder.add_argument("--out", type=Path, help="where to write the merged checkpoint")
    folder.add_argument("--lambda", dest="lam", type=float, default=None,
                        help="interpolation weight of the last member (default 1/M)")
    folder.add_argument("--eta", type=float, default=None,
                        help="LiTI η: 1 writes the merge itself (default), 0 θ_init, between them the interpolation")
    folder.add_argument("--granularity", choices=GRANULARITIES, default=None,
                        help="one angle per transformer block (layer, the default), per tensor, or for the whole model")
    folder.add_argument("--method", choices=sorted(METHODS), default=None,
                        help="how task vectors combine (default slerp)")
    folder.add_argument("--report", type=Path, help="also write the merge report (JSON) to this file")
    folder.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    parser.add_argument("--max-shard-size", default=None,
                        help=f"output shard size, e.g. 512MiB or 2GB (default {DEFAULT_MAX_SHARD_BYTES >> 20}MiB); "
                        "peak memory grows with it")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"worker threads of the merge arithmetic (default: the usable CPUs, at most "
                        f"{MAX_DEFAULT_THREADS})")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    max_shard = parse_size(args.max_shard_size) if args.max_shard_size else None
    threads = configure_threads(args.threads)
    if args.iteration is not None:
        folder_flags = [f for f in _FOLDER_FLAGS if getattr(args, f) not in (None, [])]
        if folder_flags:
            raise UserError(
                f"--iteration runs a WarpRun's merge, whose settings come from the spec; drop "
                f"{', '.join('--' + f.replace('lam', 'lambda') for f in folder_flags)}"
            )
        from kwarp.core.spec import from_cli

        run_task(from_cli(args.spec), args.iteration, console=console, max_shard_bytes=max_shard, threads=threads)
        return 0
    if args.init is None or not args.member or args.out is None:
        raise UserError("give --iteration I (task mode), or --init DIR, --member DIR (one or more) and --out DIR")
    report = merge_folders(
        args.init, args.member, args.out, lam=args.lam, eta=1.0 if args.eta is None else args.eta,
        granularity=args.granularity or "layer", method=args.method or "slerp", overwrite=args.overwrite,
        max_shard_bytes=max_shard, threads=threads, console=console,
    )
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    print_summary(report, Console())
    return 0


# ------------------------------------------------------------------ folder mode


def merge_folders(
    init: Path,
    members: list[Path],
    out: Path,
    *,
    lam: float | None = None,
    eta: float = 1.0,
    granularity: Granularity = "layer",
    method: str = "slerp",
    overwrite: bool = False,
    max_shard_bytes: int | None = None,
    threads: int = 1,
    console: Console | None = None,
    direct_writes: bool = True,
) -> MergeReport:
    """Merge checkpoint folders into `out` (a complete checkpoint, manifest last); `direct_writes` as in
    merge_checkpoints."""
    from kwarp.core.checkpoints import MANIFEST, staging, verify, write_manifest
    from kwarp.merger.liti import check_eta
    from kwarp.merger.streaming import Output, merge_checkpoints

    _check_settings(lam, eta, granularity)
    check_eta(eta)
    for folder in (init, *members):
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: no such checkpoint folder")
        if (Path(folder) / MANIFEST).exists():
            verify(folder, hashes=False)  # a kwarp checkpoint must be complete; a plain HF folder may lack one
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")
    with staging(out) as tmp, _progress(console, f"merging {len(members)} members") as progress:
        report = merge_checkpoints(
            init, members, [Output(tmp, eta)], method=method, lam=lam, granularity=granularity,
            max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES, threads=threads, progress=progress,
            direct_writes=direct_writes,
        )
        write_manifest(tmp, _meta(report, kind=report.method if eta == 1.0 else "liti", eta=eta))
    return replace(
        report, outputs=({"eta": eta, "location": str(out)},), eta=eta if eta != 1.0 else None
    )


# ------------------------------------------------------------------ task mode


def run_task(run: WarpRun, iteration: int, *, console: Console | None = None,
             max_shard_bytes: int | None = None, threads: int = 1) -> MergeReport | None:
    """The merge task of iteration `iteration`; None when everything was already done.

    Metrics live on a registry of this task, served/pushed as the environment asks (kwarp.observability.telemetry)
    for the duration of the merge and pushed once more at the end, after merge.json is recorded.
    """
    from prometheus_client import CollectorRegistry

    from kwarp.observability import telemetry
    from kwarp.observability.metrics import MergerMetrics, iteration_labels

    namespace = telemetry.task_namespace()
    registry = CollectorRegistry()
    metrics = MergerMetrics.create(registry)
    with telemetry.export(registry, component="merger", namespace=namespace, run=run.name, iteration=iteration):
        report = merge_iteration(run, iteration, console=console, max_shard_bytes=max_shard_bytes, threads=threads)
        if report is not None:
            metrics.record_merge(iteration_labels(namespace, run.name, iteration), report.to_json())
    if report is not None and console is not None:
        print_summary(report, console)
    return report


def merge_iteration(run: WarpRun, iteration: int, *, console: Console | None = None,
                    max_shard_bytes: int | None = None, threads: int = 1) -> MergeReport | None:
    """Write slerp(I), then init(I+1) unless I is last, then merge.json; skip what is already complete."""
    from kwarp.core.ownership import store_key
    from kwarp.core.plan import Task
    from kwarp.merger.streaming import Output, interpolate_checkpoints, merge_checkpoints
    from kwarp.store import layout, open_store
    from kwarp.store.fencing import claim_task

    spec, name = run.spec, store_key(run)  # name: the run's own folder in the store (layout keys)
    warp = spec.warp
    if not 0 <= iteration < warp.iterations:
        raise UserError(f"--iteration {iteration} is outside this run's iterations 0..{warp.iterations - 1}")
    shard = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
    store = open_store(spec.storage.url, spec.storage)
    slerp_key = layout.slerp(name, iteration)
    next_key = layout.init(name, iteration + 1) if iteration + 1 < warp.iterations else None
    report_key = layout.merge_report(name, iteration)
    need_slerp = not store.has_checkpoint(slerp_key)
    need_next = next_key is not None and not store.has_checkpoint(next_key)
    if not need_slerp and not need_next and store.exists(report_key):
        _say(console, f"iteration {iteration} is already merged ({store.describe()}/{report_key}); nothing to do")
        return None

    init_key = layout.init(name, iteration)
    member_keys = [layout.member_final(name, iteration, m) for m in range(warp.policies)]
    missing = [k for k in (init_key, *member_keys) if not store.has_checkpoint(k)]
    if missing:
        raise UserError(
            f"cannot merge iteration {iteration}: incomplete or absent checkpoint(s) {', '.join(missing)} in "
            f"{store.describe()}; train every member first (kwarp train --iteration {iteration} --member M)"
        )
    # This attempt's lease: an older attempt of the merge still running publishes nothing more (fencing.py).
    fence = claim_task(store, name, Task.merge(iteration).id)
    started = time.perf_counter()
    init_dir = store.open_checkpoint(init_key)
    member_dirs = [store.open_checkpoint(k) for k in member_keys]
    lam, granularity, eta = warp.slerp.lambda_, warp.slerp.granularity, warp.liti_eta
    with ExitStack() as stack:
        # Entered in this order so that slerp(I) is published before init(I+1) (exits run in reverse).
        next_dir = (
            stack.enter_context(store.write_checkpoint(next_key, _task_meta(run, iteration, "liti", eta), fence=fence))
            if need_next and next_key is not None else None
        )
        slerp_dir = (
            stack.enter_context(store.write_checkpoint(slerp_key, _task_meta(run, iteration, "slerp", 1.0), fence=fence))
            if need_slerp else None
        )
        progress = stack.enter_context(_progress(console, f"merging iteration {iteration}"))
        if slerp_dir is not None:
            outputs = [Output(slerp_dir, 1.0)] + ([Output(next_dir, eta)] if next_dir is not None else [])
            report = merge_checkpoints(init_dir, member_dirs, outputs, lam=lam, granularity=granularity,
                                       max_shard_bytes=shard, threads=threads, progress=progress)
        else:
            # slerp(I) survived an interrupted merge: LiTI from it as stored; the members are read
            # once more only for the report's angles and norms.
            report = merge_checkpoints(init_dir, member_dirs, [], lam=lam, granularity=granularity,
                                       threads=threads, progress=progress)
            if next_dir is not None:
                io = interpolate_checkpoints(init_dir, store.open_checkpoint(slerp_key), [Output(next_dir, eta)],
                                             max_shard_bytes=shard, threads=threads)
                report = replace(report, io=report.io + io)
    report = replace(
        report,
        iteration=iteration,
        eta=eta if next_key is not None else None,
        inputs={"init": init_key, "members": member_keys},
        outputs=tuple(
            [{"eta": 1.0, "location": slerp_key}] + ([{"eta": eta, "location": next_key}] if next_key else [])
        ),
        io=replace(report.io, seconds=time.perf_counter() - started),
    )
    store.put_json(report_key, report.to_json(), fence=fence)  # last: its existence marks the merge done
    return report


def _task_meta(run: WarpRun, iteration: int, kind: str, eta: float) -> dict[str, Any]:
    warp = run.spec.warp
    return {
        "kind": kind,
        "created": time.time(),
        "run": run.name,
        "iteration": iteration,
        "method": "slerp",
        "members": warp.policies,
        "lambda": warp.slerp_lambda,
        "granularity": warp.slerp.granularity,
        "eta": eta,
    }


def _meta(report: MergeReport, *, kind: str, eta: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "created": time.time(),
        "method": report.method,
        "members": report.members,
        "lambda": report.step_lambdas[-1] if report.step_lambdas else None,
        "granularity": report.granularity,
        "eta": eta,
    }


# ------------------------------------------------------------------ output


def print_summary(report: MergeReport, console: Console) -> None:
    from rich.table import Table

    doc = report.to_json()
    table = Table(title=f"{report.method} of {report.members} members, granularity {report.granularity}",
                  title_justify="left")
    table.add_column("group")
    table.add_column("angle °", justify="right")
    table.add_column("‖δ‖ per member", justify="right")
    table.add_column("‖merged‖/mean‖δ‖", justify="right")
    groups = list(report.groups)
    shown = groups if len(groups) <= _SUMMARY_ROWS else groups[: _SUMMARY_ROWS // 2] + groups[-_SUMMARY_ROWS // 2:]
    for i, g in enumerate(shown):
        if len(groups) > _SUMMARY_ROWS and i == _SUMMARY_ROWS // 2:
            table.add_row(f"... {len(groups) - _SUMMARY_ROWS} more", "", "", "")
        table.add_row(
            g.name, _fmt(g.angle_deg, ".2f"), " ".join(f"{n:.4g}" for n in g.norms), _fmt(g.norm_ratio, ".3f")
        )
    console.print(table)
    angle = doc["summary"]["angle_deg"]
    angle_text = f"{angle['mean']:.2f}° (min {angle['min']:.2f}, max {angle['max']:.2f})" if angle else "undefined"
    rate = doc["bytes_per_second"]
    console.print(
        f"λ = {doc['lambda']}  angle {angle_text}  fallbacks {doc['summary']['fallbacks']}  "
        f"{doc['bytes'] / 1e9:.2f} GB in {doc['seconds']:.1f} s"
        + (f" ({rate / 1e6:.0f} MB/s)" if rate else "")
        + "  -> " + ", ".join(f"{o['location']} (η={o['eta']})" for o in doc["outputs"])
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text)


@contextmanager
def _progress(console: Console | None, label: str) -> Iterator[Progress | None]:
    if console is None or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        f"[bold]{label}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, advance=done, total=total)

        yield advance


def configure_threads(threads: int | None) -> int:
    """The engine's worker threads; torch itself runs single-threaded inside each worker. Imports torch and the
    engine the merge process's way (kwarp.merger.startup) if nothing imported torch yet."""
    from kwarp.merger.startup import import_engine

    torch = import_engine()
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(1)
    return threads


def _check_settings(lam: float | None, eta: float, granularity: str) -> None:
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise UserError(f"--lambda must lie in [0, 1], got {lam}")
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"--eta must lie in [0, 1], got {eta}")
    if granularity not in GRANULARITIES:
        raise UserError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got '{granularity}'")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_size(text: str | int) -> int:
    """'512MiB' -> 536870912, '2GB' -> 2000000000, '1048576' -> 1048576."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise UserError(f"--max-shard-size: '{text}' is not a size; write e.g. 512MiB, 2GB or a number of bytes")
    number, unit, binary = match.groups()
    power = " KMGT".index(unit.upper()) if unit else 0
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size < 1:
        raise UserError(f"--max-shard-size must be positive, got '{text}'")
    return size


if __name__ == "__main__":  # pragma: no cover - `kwarp merge` is the entry point
    from kwarp.cli import main as kwarp_main

    sys.exit(kwarp_main(["merge", *sys.argv[1:]]))
