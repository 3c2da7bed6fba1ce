"""The embedded runner's identity for a run, and where `kwarp report` finds a run's folder.

A `kwarp run` has no API server to give it a uid: the first run of a document makes one and records it
in the folder's OWNER.json (kwarp.core.ownership); running the same document again (after Ctrl-C, a
reboot) finds that record by namespace, name and spec digest and continues it. A document of the same
name with another spec is refused, naming the fields that differ.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from kwarp.core.errors import UserError
from kwarp.core.owners import read_owners
from kwarp.core.ownership import local_uid, namespace_of, newest, spec_digest, store_key
from kwarp.core.spec import SpecError, WarpRun, changed_fields, parse
from kwarp.store import Store, layout

# What the runner ignores when it compares a recorded spec with the document (the digest's ignores).
_IGNORED = ("suspend", "failure_policy", "cleanup", "resources", "storage")


def with_identity(run: WarpRun, namespace: str, uid: str) -> WarpRun:
    meta = run.metadata.model_copy(update={"namespace": namespace, "uid": uid})
    return run.model_copy(update={"metadata": meta})


def identify(run: WarpRun, store: Store, env: Mapping[str, str] | None = None) -> WarpRun:
    """`run` with metadata.namespace and metadata.uid set: the document's uid if it has one, else the
    uid of the local run of this namespace, name and spec recorded in the store, else a new one."""
    env = os.environ if env is None else env
    namespace = namespace_of(run, env)
    if run.metadata.uid:
        return with_identity(run, namespace, run.metadata.uid)
    choice = local_uid(read_owners(store, namespace, run.name), namespace, run.name, spec_digest(run.spec))
    if choice.owner is not None:
        return with_identity(run, namespace, choice.owner.uid)
    if choice.conflict is not None:
        folder = choice.conflict.key
        changed = ["spec"]
        recorded = store.get_json(layout.spec_json(folder))
        if recorded is not None:
            try:
                changed = changed_fields(parse(recorded).spec, run.spec, ignore=_IGNORED) or changed
            except SpecError:
                pass
        raise UserError(
            f"the store {store.url} already holds run '{run.name}' (namespace {namespace}) made with a different "
            f"{', '.join(changed)} (in {folder}/); give the run a new metadata.name, use another --store, "
            f"or delete {folder}/ from the store to start over"
        )
    return with_identity(run, namespace, str(uuid.uuid4()))


def report_key(store: Store, name: str, *, namespace: str, uid: str | None = None, run: WarpRun | None = None) -> str | None:
    """The folder of run `name` to report on: the given uid's; else the newest recorded run of this
    name (of the document's spec, when a document is given); else a folder named `name` (a store
    written before runs had their own folders, or by task commands run by hand); None if none."""
    if uid:
        return store_key(with_identity(run, namespace, uid)) if run else f"{namespace}/{name}/{uid}"
    owner = newest(read_owners(store, namespace, name), namespace, name, spec_digest(run.spec) if run else None)
    if owner is None and run is not None:
        owner = newest(read_owners(store, namespace, name), namespace, name)
    if owner is not None:
        return owner.key
    if store.list(layout.run_prefix(name)):
        return name
    return None
