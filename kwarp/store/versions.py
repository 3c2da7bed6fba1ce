"""Versions of a checkpoint and the pointer that picks one: the pure rules of an atomic, fenced publish.

A checkpoint key holds any number of immutable versions and one pointer to the current one:

    s3://    <key>/.v/<version>/<file>     the objects of one upload, never written twice
             <key>/MANIFEST.json           the pointer: the manifest plus, per file, its object and
                                           ETag, and the version, generation and writer (written last)
    file://  <key>                         a symbolic link to .<name>.v/<version> (replaced in one rename)
             .<name>.v/<version>/          a complete folder with its MANIFEST.json

Publishing uploads a new version beside the current one, then swaps the pointer (compare-and-swap),
then collects the superseded versions. So an interrupted publish leaves the previous checkpoint
whole, and a reader sees one version, never a mix.

Generations fence stale writers. Each writer publishes at a generation fixed when it starts: a task's
fencing token (kwarp.store.fencing: the epoch of its task's lease), else (a copy tool) one more than the
pointer's. The pointer never moves to a lower generation (compare-and-swap), so a stale attempt
cannot publish over a newer one, and collecting versions below the pointer's generation never
removes an upload that could still become current.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import replace

from kwarp.core.checkpoints import FileEntry, Manifest, Placement
from kwarp.store.base import FencedOut

VERSIONS = ".v"
"""The folder of a checkpoint's versions on S3: <key>/.v/<version>/."""

_VERSION = re.compile(r"^g(\d{10})-[0-9a-f]{8}$")


def new_version(generation: int) -> str:
    """A fresh version name: sortable by generation, unique per upload."""
    return f"g{generation:010d}-{uuid.uuid4().hex[:8]}"


def generation_of(version: str) -> int | None:
    m = _VERSION.match(version)
    return int(m.group(1)) if m else None


def writer_generation(current: int | None, fence_epoch: int | None) -> int:
    """The generation a writer publishes at, fixed when it starts.

    A task writer's fencing token (its lease epoch) is its generation. A writer without one (a copy tool)
    takes the next generation after the pointer's current one: it is newer than everything already there.
    """
    return fence_epoch if fence_epoch is not None else (current or 0) + 1


def check_generation(current: int | None, generation: int, *, fenced: bool, what: str) -> None:
    """Compare-before-write: the pointer never moves to a lower generation. Raise FencedOut otherwise."""
    if current is None or current <= generation:
        return
    if fenced:
        raise FencedOut(
            f"{what}: a newer attempt (generation {current}) has already published it; this attempt "
            f"(generation {generation}) is stale and does not overwrite it"
        )
    raise FencedOut(f"{what}: another writer published a newer version while this one was uploading; "
                    "nothing was published (run the copy again to replace it)")


def superseded(versions: Iterable[str], new: str, old: str | None, generation: int) -> list[str]:
    """Versions to collect once `new` (at `generation`) replaced `old` as the current version.

    The version it replaced goes, and every version of a lower generation: earlier publishes and uploads
    of attempts that can no longer publish (their generation is below the pointer's). Versions at the
    same or a higher generation stay: a concurrent or newer writer may still be uploading them (they go
    once the pointer passes their generation). A name that is not a version (foreign or damaged) goes too.
    """
    out = []
    for v in versions:
        if v == new:
            continue
        g = generation_of(v)
        if v == old or g is None or g < generation:
            out.append(v)
    return sorted(out)


def normalize_etag(etag: str | None) -> str | None:
    return etag.strip().strip('"').lower() if etag else None


def placed(manifest: Manifest, version: str, generation: int, writer: str | None, etags: dict[str, str | None]) -> Manifest:
    """The pointer of a new S3 version: `manifest` with each file's object (under .v/<version>/) and ETag."""
    files = tuple(
        replace(e, object=f"{VERSIONS}/{version}/{e.name}", etag=normalize_etag(etags.get(e.name)))
        for e in manifest.files
    )
    return replace(manifest, files=files, placement=Placement(version, generation, writer))


def object_of(entry: FileEntry) -> str:
    """Where a file of a checkpoint is stored, relative to its key (the older layout: its own name)."""
    return entry.object or entry.name


def missing_or_changed(manifest: Manifest, present: dict[str, tuple[int, str | None]]) -> list[str]:
    """What keeps a checkpoint from being whole, from one listing {object relative to the key: (size, ETag)}.

    Each object must exist with the listed size and, where the pointer recorded one, the same ETag: a file
    replaced by another writer (same size, other bytes) has another ETag.
    """
    problems = []
    for e in manifest.files:
        found = present.get(object_of(e))
        if found is None:
            problems.append(f"{e.name} missing")
        elif found[0] != e.size:
            problems.append(f"{e.name} has {found[0]} bytes, not {e.size}")
        elif e.etag and normalize_etag(found[1]) != normalize_etag(e.etag):
            problems.append(f"{e.name} was replaced (ETag {normalize_etag(found[1])}, recorded {e.etag})")
    return problems
