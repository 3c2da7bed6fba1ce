"""`kwarp store`: list, verify and copy checkpoints between file:// and s3:// stores.

    kwarp store ls URL [--checkpoints]     keys with sizes, or the checkpoints by the storage layout
    kwarp store verify URL|PATH            re-hash every file of a checkpoint against its MANIFEST.json
    kwarp store cp SRC DST                 copy a checkpoint, either direction (e.g. upload a base model)

An s3:// URL takes its endpoint, TLS and credentials from the environment (KWARP_S3_ENDPOINT,
KWARP_S3_SECURE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; see kwarp.store.s3).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from kwarp.core.checkpoints import MANIFEST, CheckpointError, Manifest
from kwarp.store import open_store
from kwarp.store.base import Store, StoreError
from kwarp.store.local import FileStore
from kwarp.store.s3 import S3Store, parse_s3_url
from kwarp.store.versions import object_of

# A checkpoint folder of the storage layout (kwarp/store/layout.py), after an optional run prefix.
_LAYOUT = re.compile(
    r"(?:^|/)(?:(?P<base>base)|iter-(?P<i>\d+)/(?:(?P<init>init)|(?P<slerp>slerp)|member-(?P<m>\d+)/(?P<kind>final|ema|state)))$"
)


def layout_role(folder: str) -> str | None:
    """What a folder is in the storage layout ('iter 0 member 1 final'), or None if it is not a checkpoint slot."""
    m = _LAYOUT.search(folder)
    if not m:
        return None
    if m["base"]:
        return "base (θ_sft)"
    if m["init"]:
        return f"iter {m['i']} init"
    if m["slerp"]:
        return f"iter {m['i']} slerp"
    return f"iter {m['i']} member {m['m']} {m['kind']}"


def checkpoint_folders(keys: list[str]) -> dict[str, str]:
    """{folder: role} of the checkpoints among `keys`: layout slots holding objects, and any folder with a manifest."""
    folders: dict[str, str] = {}
    for key in keys:
        parts = key.split("/")
        if parts[-1] == MANIFEST and len(parts) > 1:
            folder = "/".join(parts[:-1])
            folders.setdefault(folder, layout_role(folder) or "")
        for n in range(1, len(parts)):
            folder = "/".join(parts[:n])
            role = layout_role(folder)
            if role is not None:
                folders[folder] = role
                break
    return folders


@dataclass(frozen=True)
class CheckpointRow:
    key: str
    role: str
    files: int
    bytes: int
    state: str  # complete | incomplete | broken
    detail: str = ""


def checkpoint_rows(keys: dict[str, int], manifests: dict[str, Manifest | None]) -> list[CheckpointRow]:
    """The state of each checkpoint from one listing ({key: size}, checkpoint versions included) and its
    manifest (None if absent). A file is found where the manifest says the store put it (object_of)."""
    rows = []
    for folder, role in sorted(checkpoint_folders(sorted(keys)).items()):
        present = {k[len(folder) + 1 :]: size for k, size in keys.items() if k.startswith(folder + "/")}
        manifest = manifests.get(folder)
        if manifest is None:
            files = [n for n in present if n != MANIFEST]
            rows.append(
                CheckpointRow(
                    folder, role, len(files), sum(present[n] for n in files), "incomplete", f"no {MANIFEST}"
                )
            )
            continue
        missing = [e.name for e in manifest.files if object_of(e) not in present]
        wrong = [e.name for e in manifest.files if object_of(e) in present and present[object_of(e)] != e.size]
        if missing or wrong:
            detail = ", ".join([*(f"{n} missing" for n in missing), *(f"{n} wrong size" for n in wrong)])
            rows.append(
                CheckpointRow(folder, role, len(manifest.files), manifest.total_bytes, "broken", detail)
            )
        else:
            rows.append(CheckpointRow(folder, role, len(manifest.files), manifest.total_bytes, "complete"))
    return rows


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


# -------------------------------------------------------------------------------- store access


def key_sizes(store: Store, prefix: str = "") -> dict[str, int]:
    if isinstance(store, S3Store):
        return store.list_sizes(prefix)
    if isinstance(store, FileStore):
        return {k: store.path(k).stat().st_size for k in store.list(prefix)}
    raise StoreError(f"cannot list sizes of {store.describe()}")  # pragma: no cover


def locate(url: str) -> tuple[Store, str]:
    """(store, key) of one checkpoint: s3://bucket/a/b -> (the bucket, 'a/b'); a path -> (its parent, its name)."""
    if url.startswith("s3://"):
        bucket, key = parse_s3_url(url)
        if not key:
            raise StoreError(
                f"{url} names a bucket, not a checkpoint: add its key, as in s3://{bucket}/run/base"
            )
        return S3Store.from_url(f"s3://{bucket}"), key
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"unsupported URL '{url}': use a path, file:///abs/path or s3://bucket/key")
    path = Path(url[len("file://") :] if url.startswith("file://") else url).expanduser().resolve()
    if path.parent == path:
        raise StoreError(f"{url}: give a checkpoint folder, not the file system root")
    return FileStore(path.parent), path.name


def _where(store: Store, key: str) -> str:
    return store.object_url(key) if isinstance(store, S3Store) else str(store.path(key))  # type: ignore[attr-defined]


@contextmanager
def _progress(console: Console, description: str, total: int) -> Iterator[Callable[[int], None]]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


# -------------------------------------------------------------------------------- commands


def cmd_ls(args: argparse.Namespace) -> int:
    console = Console()
    store = open_store(args.url)
    sizes = key_sizes(store)
    if not args.checkpoints:
        table = Table(title=store.describe(), title_justify="left")
        table.add_column("key", overflow="fold")
        table.add_column("size", justify="right")
        for key in sorted(sizes):
            table.add_row(key, human_bytes(sizes[key]))
        console.print(table)
        console.print(f"{len(sizes)} objects, {human_bytes(sum(sizes.values()))}")
        return 0
    folders = checkpoint_folders(sorted(sizes))
    manifests = {f: store.read_manifest(f) if f + "/" + MANIFEST in sizes else None for f in folders}
    rows = checkpoint_rows(sizes, manifests)
    table = Table(title=f"checkpoints in {store.describe()}", title_justify="left")
    for name, justify in (
        ("checkpoint", "left"),
        ("role", "left"),
        ("files", "right"),
        ("size", "right"),
        ("state", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    style = {"complete": "green", "incomplete": "yellow", "broken": "red"}
    for row in rows:
        state = f"[{style[row.state]}]{row.state}[/]" + (f" ({row.detail})" if row.detail else "")
        table.add_row(row.key, row.role or "-", str(row.files), human_bytes(row.bytes), state)
    console.print(table)
    complete = sum(r.state == "complete" for r in rows)
    console.print(f"{len(rows)} checkpoints, {complete} complete")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    console = Console()
    store, key = locate(args.target)
    started = time.monotonic()
    if isinstance(store, S3Store):
        manifest = store.read_manifest(key)
        if manifest is None:
            raise CheckpointError(
                f"{_where(store, key)}: no {MANIFEST}; the checkpoint is absent or was never completed"
            )
        with _progress(console, f"verifying {key}", manifest.total_bytes) as advance:
            manifest = store.verify_checkpoint(key, progress=advance)
    else:
        with console.status(f"verifying {_where(store, key)}"):
            manifest = store.verify_checkpoint(key)
    seconds = time.monotonic() - started
    console.print(
        f"[green]ok[/] {_where(store, key)}: {len(manifest.files)} files, {human_bytes(manifest.total_bytes)} "
        f"match their sha256 ({seconds:.1f}s); digest {manifest.digest[:16]}"
    )
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    console = Console()
    src, src_key = locate(args.src)
    dst, dst_key = locate(args.dst)
    started = time.monotonic()
    if isinstance(src, FileStore):
        folder = src.path(src_key)
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder")
        if not (folder / MANIFEST).is_file():
            console.print(f"{folder} has no {MANIFEST}: computing one (sha256 of every file)")
        if isinstance(dst, S3Store):
            total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
            with _progress(console, f"uploading {src_key}", total) as advance:
                manifest = dst.put_checkpoint(folder, dst_key, progress=advance)
        else:
            with console.status(f"copying {folder}"):
                manifest = dst.put_checkpoint(folder, dst_key)
    else:
        assert isinstance(src, S3Store)
        manifest_or_none = src.read_manifest(src_key)
        if manifest_or_none is None:
            raise CheckpointError(
                f"{_where(src, src_key)}: no {MANIFEST}; the checkpoint is absent or was never completed"
            )
        manifest = manifest_or_none
        if isinstance(dst, FileStore):
            # Straight into a new version of the destination, published once verified.
            with (
                _progress(console, f"downloading {src_key}", manifest.total_bytes) as advance,
                dst.new_version(dst_key) as tmp,
            ):
                src.download_checkpoint(src_key, tmp, manifest=manifest, progress=advance)
        else:
            with _progress(console, f"downloading {src_key}", manifest.total_bytes) as advance:
                folder = src.open_checkpoint(src_key, verify_hashes=False, progress=advance)
            with _progress(console, f"uploading {dst_key}", manifest.total_bytes) as advance:
                manifest = dst.put_checkpoint(folder, dst_key, progress=advance)
    seconds = time.monotonic() - started
    console.print(
        f"[green]copied[/] {_where(src, src_key)} -> {_where(dst, dst_key)}: {len(manifest.files)} files, "
        f"{human_bytes(manifest.total_bytes)} in {seconds:.1f}s "
        f"({human_bytes(manifest.total_bytes / max(seconds, 1e-9))}/s); digest {manifest.digest[:16]}"
    )
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="{ls,verify,cp}")
    ls = sub.add_parser("ls", help="list the objects under a store URL, or its checkpoints")
    ls.add_argument("url", help="a path, file:///abs/path or s3://bucket/prefix")
    ls.add_argument(
        "--checkpoints",
        action="store_true",
        help="list checkpoints by the storage layout, with their size and state (complete, incomplete, broken)",
    )
    ls.set_defaults(func=cmd_ls)
    verify = sub.add_parser("verify", help="re-hash every file of a checkpoint against its MANIFEST.json")
    verify.add_argument("target", help="a checkpoint: s3://bucket/key, file:///abs/path or a local folder")
    verify.set_defaults(func=cmd_verify)
    cp = sub.add_parser(
        "cp", help="copy a checkpoint between file:// and s3:// (a folder without MANIFEST.json gets one)"
    )
    cp.add_argument("src", help="source checkpoint: a local folder, file:///abs/path or s3://bucket/key")
    cp.add_argument("dst", help="destination: a local folder, file:///abs/path or s3://bucket/key")
    cp.set_defaults(func=cmd_cp)


__all__ = ["checkpoint_folders", "checkpoint_rows", "layout_role", "locate", "register"]
