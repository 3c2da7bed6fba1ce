"""Who owns a run's folder in the store, and where that folder is. Pure: no I/O here.

    <storage.url>/<namespace>/<name>/<uid>/              one run's folder; only that run writes there
    <storage.url>/<namespace>/<name>/<uid>/OWNER.json    written before anything else of the run

A run's name alone does not identify it: two namespaces may both hold a run `demo`, and a deleted
run may be re-created under its old name with another spec. Keying the folder by namespace, name
and uid gives each run its own folder, so no run can see, continue or delete another's checkpoints;
the ownership record (namespace, name, uid, spec digest, executor) says whose folder it is, and the
executors check it before they adopt, continue or delete anything there (`decide`).

The operator's uid is the WarpRun's `metadata.uid`; the embedded runner (`kwarp run`) makes one the
first time and finds it again from the records under `<namespace>/<name>/` (`local_uid`), in
namespace `local` unless the document or $KWARP_NAMESPACE names another. Task commands receive the
uid in the document's `metadata.uid` (`store_key`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kwarp.core.spec import SAFE_TO_CHANGE, WarpRun, WarpRunSpec

OWNER_FILE = "OWNER.json"
LOCAL_NAMESPACE = "local"
Executor = Literal["operator", "local"]

# Fields a run may change without changing its results, plus where the store is (a moved local
# store is the same run; the operator refuses a storage change anyway): left out of the digest.
DIGEST_IGNORES = (*SAFE_TO_CHANGE, "storage")

# Condition reasons (the operator's StoreConflict condition; the runner's error says the same).
OWNED_BY_ANOTHER_RUN = "OwnedByAnotherRun"
SPEC_DIGEST_MISMATCH = "SpecDigestMismatch"
UNREADABLE_RECORD = "UnreadableOwnerRecord"


def _segment(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{what} '{value}' cannot name a folder of the store")
    return value


def run_key(namespace: str, name: str, uid: str) -> str:
    """The run's folder, relative to the store root (no trailing '/')."""
    return f"{_segment(namespace, 'namespace')}/{_segment(name, 'name')}/{_segment(uid, 'uid')}"


def owner_key(key: str) -> str:
    return f"{key}/{OWNER_FILE}"


def namespace_of(run: WarpRun, env: Mapping[str, str] | None = None) -> str:
    """The run's namespace: the document's, else $KWARP_NAMESPACE, else `local` (the embedded runner's)."""
    return run.metadata.namespace or (env or {}).get("KWARP_NAMESPACE") or LOCAL_NAMESPACE


def store_key(run: WarpRun) -> str:
    """The folder a task of `run` reads and writes. Executors always put the uid into the document they
    hand a task; a document without one (a task command run by hand on a document file) keeps the plain
    `<name>` folder of a tool invocation."""
    uid = run.metadata.uid
    if not uid:
        return run.name
    return run_key(run.metadata.namespace or LOCAL_NAMESPACE, run.name, uid)


def spec_digest(spec: WarpRunSpec) -> str:
    """sha256 of the fields that decide a run's results (canonical JSON, camelCase names)."""
    doc = spec.model_dump(by_alias=True, mode="json", exclude=set(DIGEST_IGNORES))
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Owner:
    """The ownership record of one run's folder."""

    namespace: str
    name: str
    uid: str
    spec_digest: str
    executor: Executor
    created: str = ""

    @property
    def key(self) -> str:
        return run_key(self.namespace, self.name, self.uid)

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.uid)

    def describe(self) -> str:
        return f"{self.executor} run {self.namespace}/{self.name} (uid {self.uid})"

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid, "specDigest": self.spec_digest,
                "executor": self.executor, "created": self.created}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Owner:
        """Raises ValueError when `data` is not an ownership record."""
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        try:
            fields = {k: data[j] for k, j in (("namespace", "namespace"), ("name", "name"), ("uid", "uid"),
                                              ("spec_digest", "specDigest"), ("executor", "executor"))}  # fmt: skip
        except KeyError as err:
            raise ValueError(f"field {err} missing") from None
        if not all(isinstance(v, str) and v for v in fields.values()) or fields["executor"] not in ("operator", "local"):
            raise ValueError("fields namespace, name, uid, specDigest and executor must be non-empty strings")
        return cls(**fields, created=str(data.get("created") or ""))


@dataclass(frozen=True)
class Verdict:
    """What an executor may do with a run folder: claim it (no record yet: write ours first), use it
    (the record is ours), or nothing (a conflict, with a reason constant and a message for the user)."""

    action: Literal["claim", "own", "conflict"]
    reason: str = ""
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.action != "conflict"


def decide(record: Any, me: Owner, *, where: str) -> Verdict:
    """May `me` write (adopt, continue) the folder whose OWNER.json holds `record` (None: absent)?

    Only the same run (namespace, name and uid) with the same spec digest may: another identity means
    another run's data; another digest means data made by another spec (a run whose status was lost
    and whose spec changed meanwhile), which must not be continued as if it were this spec's.
    """
    if record is None:
        return Verdict("claim")
    try:
        owner = Owner.from_json(record)
    except ValueError as err:
        return Verdict("conflict", UNREADABLE_RECORD,
                       f"{where}/{OWNER_FILE} is not a kwarp ownership record ({err}); the folder is left alone")
    if owner.identity != me.identity:
        return Verdict("conflict", OWNED_BY_ANOTHER_RUN,
                       f"{where}/ belongs to {owner.describe()}, not to this run (uid {me.uid}); "
                       "its data is neither used nor deleted")  # fmt: skip
    if owner.spec_digest != me.spec_digest:
        return Verdict("conflict", SPEC_DIGEST_MISMATCH,
                       f"{where}/ was written by this run with another spec ({owner.spec_digest[:19]}..., "
                       f"now {me.spec_digest[:19]}...); it is not continued with this one. Restore the "
                       "original spec, or create a new WarpRun")  # fmt: skip
    return Verdict("own")


def may_delete(record: Any, me: Owner, *, where: str) -> Verdict:
    """May `me` delete its folder? Yes when the record is ours or absent (the folder's key holds our
    uid, so only our tasks wrote there); never when the record names another run. The spec digest
    does not matter here: it is still this run's data."""
    if record is None:
        return Verdict("own")
    verdict = decide(record, me, where=where)
    return Verdict("own") if verdict.reason == SPEC_DIGEST_MISMATCH else verdict


@dataclass(frozen=True)
class LocalChoice:
    """The embedded runner's identity for a document: an existing record to continue (`owner`), a
    conflict (`conflict`: a local run of that name made with another spec), or neither (start anew)."""

    owner: Owner | None = None
    conflict: Owner | None = None


def local_uid(records: Sequence[Owner], namespace: str, name: str, digest: str) -> LocalChoice:
    """Which embedded run a `kwarp run` of (namespace, name, digest) continues. Records written by the
    operator are never adopted (a cluster run's folder is the cluster's); of the local ones, the one
    with the same spec digest is continued (the newest if several); a local one with another digest
    is a conflict, as the runner refuses to mix two specs under one name."""
    mine = [r for r in records if r.executor == "local" and (r.namespace, r.name) == (namespace, name)]
    same = sorted((r for r in mine if r.spec_digest == digest), key=lambda r: r.created)
    if same:
        return LocalChoice(owner=same[-1])
    if mine:
        return LocalChoice(conflict=sorted(mine, key=lambda r: r.created)[-1])
    return LocalChoice()


def newest(records: Sequence[Owner], namespace: str, name: str, digest: str | None = None) -> Owner | None:
    """The newest record of (namespace, name), of this spec digest when given (for `kwarp report`)."""
    found = [r for r in records if (r.namespace, r.name) == (namespace, name) and (digest is None or r.spec_digest == digest)]
    return max(found, key=lambda r: r.created) if found else None


# ------------------------------------------------------------------ which stores an operator allows


def _normalised(url: str) -> tuple[str, tuple[str, ...]] | None:
    """(scheme, path segments) of a storage URL, or None when it holds a '.' or '..' segment."""
    if url.startswith("s3://"):
        scheme, rest = "s3", url[len("s3://"):]
    else:
        scheme, rest = "file", url[len("file://"):] if url.startswith("file://") else url
        if not rest.startswith("/"):
            return None  # a relative path cannot be compared with an operator's prefixes
    parts = tuple(p for p in rest.split("/") if p)
    if any(p in (".", "..") for p in parts):
        return None
    if scheme == "file":
        parts = tuple(p for p in posixpath.normpath("/" + "/".join(parts)).split("/") if p)
    return scheme, parts


def storage_allowed(url: str, prefixes: Sequence[str]) -> bool:
    """Whether `url` lies under one of `prefixes` (whole path segments: s3://kwarp/runs allows
    s3://kwarp/runs/team-a but not s3://kwarp/runs-evil). No prefixes: everything is allowed."""
    if not prefixes:
        return True
    target = _normalised(url)
    if target is None:
        return False
    for prefix in prefixes:
        allowed = _normalised(prefix)
        if allowed is not None and allowed[0] == target[0] and target[1][: len(allowed[1])] == allowed[1]:
            return True
    return False
