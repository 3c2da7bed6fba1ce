"""Which spec a WarpRun runs in a cluster: the accepted spec plus the changes that are safe to make while it
runs, checked against what only a cluster refuses (relative paths, DNS names) and the operator's
guardrails. Pure functions: operator/reconcile.py calls them on every reconcile."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kwarp.core.guardrails import Guardrails, violations
from kwarp.core.plan import Task
from kwarp.core.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    SAFE_TO_CHANGE,
    SpecError,
    WarpRun,
    WarpRunSpec,
    keep_images,
    parse,
    unsafe_changes,
)

from .jobs import gang_attempts, gang_name
from .status import SpecCheck

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def cluster_problems(spec: WarpRunSpec, run_name: str | None = None, default_queue: str | None = None) -> list[str]:
    """What cannot work in a cluster although the spec validates: relative local paths mean nothing
    in a pod (the CLI resolves them against the document's folder; an operator has no such folder);
    a multi-node member's Service is named like its Job, and a Service name is a DNS-1035 label (a run
    name is a DNS-1123 label, which may start with a digit), as is each pod's host name <job>-<index>.
    A queued run (spec.queueName, or the operator's `default_queue`) trains an iteration's members as one
    gang Job of N pods per member (operator/jobs.py gang_manifest), whose pods are named <job>-<index>."""
    locations = {
        "spec.storage.url": spec.storage.url,
        "spec.policy.location": spec.policy.location,
        "spec.data.train": spec.data.train,
        "spec.data.eval": spec.data.eval,
    }
    if spec.reward.location is not None:
        locations["spec.reward.location"] = spec.reward.location
    if spec.export is not None and spec.export.to is not None:
        locations["spec.export.to"] = spec.export.to
    problems = []
    for name, value in locations.items():
        if "://" not in value and not Path(value).is_absolute():
            problems.append(
                f"  - {name}: '{value}' is a relative path, which means nothing in a pod; "
                "use s3://bucket/key (or an absolute path that every pod mounts)"
            )
    nodes = spec.resources.trainer.nodes
    queue = spec.queue_name or default_queue
    if run_name is not None and queue:
        # A gang's pods get the host name <job>-<index> (Indexed Job), a DNS-1123 label of at most 63 characters;
        # with multi-node members the gang's Service is named like the Job, a DNS-1035 label.
        job = gang_name(run_name, spec.warp.iterations - 1, gang_attempts(spec))
        pod = f"{job}-{spec.warp.policies * nodes - 1}"
        if len(pod) > 63:
            problems.append(
                f"  - metadata.name: '{run_name}' is too long to name the pods of its queued iterations (e.g. "
                f"'{pod}', {len(pod)} characters; a pod's host name has at most 63): use a shorter name"
            )
        elif nodes > 1 and not _DNS_LABEL.match(job):
            problems.append(
                f"  - metadata.name: '{run_name}' cannot name the Service of its queued multi-node members (e.g. "
                f"'{job}'): a Service name is a DNS-1035 label (starting with a letter); rename the run"
            )
    if run_name is not None and nodes > 1 and not queue:
        last = Task.train(spec.warp.iterations - 1, spec.warp.policies - 1)
        longest = last.job_name(run_name, spec.failure_policy.max_retries)
        if not all(_DNS_LABEL.match(n) and len(n) <= 63 for n in (longest, f"{longest}-{nodes - 1}")):
            problems.append(
                f"  - metadata.name: '{run_name}' cannot name a multi-node member's Service and pods (e.g. "
                f"'{longest}-{nodes - 1}'): those must be DNS-1035 labels (lower-case letters, digits and '-', "
                "starting with a letter, at most 63 characters); rename the run or set resources.trainer.nodes: 1"
            )
    return problems


def effective_spec(body: Mapping[str, Any], accepted: WarpRunSpec | None, guardrails: Guardrails | None = None,
                   default_queue: str | None = None) -> tuple[WarpRunSpec | None, SpecCheck]:  # fmt: skip
    """The spec to execute, and what is wrong with the document.

    The first valid spec is accepted. Later, changes to SAFE_TO_CHANGE fields are taken (they alter how
    or whether work proceeds, not its results: suspend, failurePolicy, cleanup, resources, queueName); a change
    to any other field, and an image within resources, is refused and the run goes on with its accepted
    spec. An invalid edit of a running run likewise leaves it running on the accepted spec, and so does
    one the operator's guardrails forbid (a first spec they forbid is never accepted).
    """
    meta = body.get("metadata", {})
    source = f"WarpRun {meta.get('namespace', '')}/{meta.get('name', '')}"
    try:
        run = parse(body, source=source)
    except SpecError as err:
        return accepted, SpecCheck(invalid=str(err))
    problems = cluster_problems(run.spec, run.name, default_queue)
    if problems:
        n = len(problems)
        return accepted, SpecCheck(invalid="\n".join([f"{source}: invalid WarpRun ({n} problem{'s' * (n > 1)})", *problems]))
    forbidden = violations(run.spec, meta.get("namespace") or "default", guardrails) if guardrails is not None else []
    if forbidden:
        n = len(forbidden)
        lines = [f"{source}: forbidden by the operator's guardrails ({n} field{'s' * (n > 1)}); ask the cluster "
                 "admin, or choose what they allow", *(f"  - {path}: {why}" for path, why in forbidden)]  # fmt: skip
        return accepted, SpecCheck(invalid="\n".join(lines), forbidden=True)
    if accepted is None:
        return run.spec, SpecCheck()
    refused = unsafe_changes(accepted, run.spec)
    if refused:
        safe = {name: getattr(run.spec, name) for name in SAFE_TO_CHANGE}
        safe["resources"] = keep_images(accepted, run.spec.resources)
        return accepted.model_copy(update=safe), SpecCheck(refused=tuple(refused))
    return run.spec, SpecCheck()


def run_document(name: str, namespace: str, spec: WarpRunSpec, uid: str | None = None) -> WarpRun:
    """The WarpRun the tasks receive: the effective spec, and of the API object's metadata only what
    names the run's folder in the store (namespace, name, uid: kwarp.core.ownership.store_key)."""
    meta = {"name": name, "namespace": namespace, **({"uid": uid} if uid else {})}
    return WarpRun.model_validate(
        {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": meta, "spec": spec}
    )  # fmt: skip
