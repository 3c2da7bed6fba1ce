"""Guardrails: what a WarpRun's author may choose about pod identity and code, per namespace. Pure.

A user who may create WarpRuns but not pods must not get, through the operator, what a pod would give:
any image, any ServiceAccount, preemption power, any node, or code of their choosing. The cluster
admin sets these (Helm values `guardrails.*`, passed to the operator as KWARP_GUARDRAILS, JSON);
the operator checks every spec it accepts and every change, and refuses one that breaks them with
condition Invalid, reason Forbidden, naming the field.

    images            spec.resources.<role>.image: exact repositories (any tag or digest) or prefixes
                      ending in '/'
    serviceAccounts   spec.resources.<role>.serviceAccountName
    priorityClasses   spec.resources.<role>.priorityClassName
    tolerationKeys    spec.resources.<role>.tolerations[].key (a toleration without a key tolerates
                      every taint: allowed only by "*")
    nodeSelectorKeys  spec.resources.<role>.nodeSelector keys
    rewardCallables   reward.callable and evaluation.goldReward.callable: module prefixes ("kwarp.tasks"
                      allows kwarp.tasks and its submodules) or exact "module:function"
    trustRemoteCode   whether policy, reward or goldReward may set trustRemoteCode: true
    exportPrefixes    spec.export.to: where a run may write its exported policy, as storage URL prefixes
                      compared by whole path segments (s3://kwarp/models allows s3://kwarp/models/x, not
                      s3://kwarp/models-x). "*" allows any s3:// location, never a local path: a path in a
                      pod is lost with the pod unless every pod mounts it, so a path (or file:) is allowed
                      only under an absolute path listed here. `to` left out (export/ in the run's own
                      folder) is always allowed; nothing else is implied, not even the run's storage.url,
                      under which `to` could overwrite other runs' folders.
    namespaces        {namespace: the fields above}: replaces those fields in that namespace

"*" in a list allows anything. A field the run leaves empty is always allowed: the operator's own
worker settings fill it. The defaults allow nothing but the bundled reward callables.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from kwarp.core.ownership import storage_allowed
from kwarp.core.spec import WarpRunSpec

ROLES = ("trainer", "merger", "evaluation")
ANY = "*"


class _Rules(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


def _export_prefixes(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for entry in value or ():
        path = entry.removeprefix("file://")
        if not (entry == ANY or (entry.startswith("s3://") and entry[len("s3://"):].strip("/")) or path.startswith("/")):
            raise ValueError(f"exportPrefixes: '{entry}' is neither s3://bucket[/prefix], an absolute path nor '*'")
    return value


class Policy(_Rules):
    """One set of rules (the cluster-wide one, or a namespace's fields that replace it)."""

    images: tuple[str, ...] | None = None
    service_accounts: tuple[str, ...] | None = None
    priority_classes: tuple[str, ...] | None = None
    toleration_keys: tuple[str, ...] | None = None
    node_selector_keys: tuple[str, ...] | None = None
    reward_callables: tuple[str, ...] | None = None
    trust_remote_code: bool | None = None
    export_prefixes: tuple[str, ...] | None = None

    _check_export = field_validator("export_prefixes")(_export_prefixes)


class Guardrails(_Rules):
    images: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    priority_classes: tuple[str, ...] = ()
    toleration_keys: tuple[str, ...] = ()
    node_selector_keys: tuple[str, ...] = ()
    reward_callables: tuple[str, ...] = ("kwarp.tasks",)
    trust_remote_code: bool = False
    export_prefixes: tuple[str, ...] = ()
    namespaces: dict[str, Policy] = Field(default_factory=dict)

    _check_export = field_validator("export_prefixes")(_export_prefixes)

    def for_namespace(self, namespace: str) -> Guardrails:
        """The rules that hold in `namespace`: the namespace's fields over the cluster-wide ones."""
        local = self.namespaces.get(namespace)
        if local is None:
            return self
        return self.model_copy(update={**local.model_dump(exclude_none=True), "namespaces": {}})


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry == ANY or (entry.endswith("/") and image.startswith(entry)):
            return True
        # A repository: itself with any tag or digest, never a longer name (repo-evil) or a sub-path.
        if image == entry or image.startswith(entry + ":") or image.startswith(entry + "@"):
            return True
    return False


def callable_allowed(target: str, allowed: tuple[str, ...]) -> bool:
    module = target.partition(":")[0]
    for entry in allowed:
        if entry == ANY or target == entry:
            return True
        if ":" not in entry and (module == entry or module.startswith(entry + ".")):
            return True
    return False


def export_allowed(to: str, allowed: tuple[str, ...]) -> bool:
    """Whether spec.export.to may be `to` (see exportPrefixes above)."""
    listed = [a for a in allowed if a != ANY]
    if to.startswith("s3://") and ANY in allowed:
        return True
    return bool(listed) and storage_allowed(to, listed)  # storage_allowed allows anything given no prefixes


def _listed(value: str, allowed: tuple[str, ...]) -> bool:
    return ANY in allowed or value in allowed


def _shown(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed) if allowed else "none"


def violations(spec: WarpRunSpec, namespace: str, guardrails: Guardrails) -> list[tuple[str, str]]:
    """[(field path, why)] for each choice of the spec that the guardrails forbid in `namespace`."""
    rules = guardrails.for_namespace(namespace)
    where = f"in namespace '{namespace}'"
    out: list[tuple[str, str]] = []
    for role in ROLES:
        pod = getattr(spec.resources, role)
        path = f"spec.resources.{role}"
        if pod.image and not image_allowed(pod.image, rules.images):
            out.append((f"{path}.image", f"image '{pod.image}' is not allowed {where} (allowed: "
                                         f"{_shown(rules.images)}; guardrails.images)"))  # fmt: skip
        if pod.service_account_name and not _listed(pod.service_account_name, rules.service_accounts):
            out.append((f"{path}.serviceAccountName", f"ServiceAccount '{pod.service_account_name}' is not allowed "
                                                      f"{where} (allowed: {_shown(rules.service_accounts)}; "
                                                      "guardrails.serviceAccounts)"))  # fmt: skip
        if pod.priority_class_name and not _listed(pod.priority_class_name, rules.priority_classes):
            out.append((f"{path}.priorityClassName", f"PriorityClass '{pod.priority_class_name}' is not allowed "
                                                     f"{where} (allowed: {_shown(rules.priority_classes)}; "
                                                     "guardrails.priorityClasses)"))  # fmt: skip
        for i, tol in enumerate(pod.tolerations):
            key = tol.key or ""
            if not (ANY in rules.toleration_keys or (key and key in rules.toleration_keys)):
                what = f"toleration key '{key}'" if key else "a toleration without a key (it tolerates every taint)"
                out.append((f"{path}.tolerations[{i}].key", f"{what} is not allowed {where} (allowed: "
                                                            f"{_shown(rules.toleration_keys)}; guardrails.tolerationKeys)"))  # fmt: skip
        for key in pod.node_selector:
            if not _listed(key, rules.node_selector_keys):
                out.append((f"{path}.nodeSelector", f"nodeSelector key '{key}' is not allowed {where} (allowed: "
                                                    f"{_shown(rules.node_selector_keys)}; guardrails.nodeSelectorKeys)"))  # fmt: skip
    rewards = [("spec.reward", spec.reward)]
    if spec.evaluation.gold_reward is not None:
        rewards.append(("spec.evaluation.goldReward", spec.evaluation.gold_reward))
    for path, reward in rewards:
        if reward.callable and not callable_allowed(reward.callable, rules.reward_callables):
            out.append((f"{path}.callable", f"'{reward.callable}' is not an allowed reward callable {where} "
                                            f"(allowed modules: {_shown(rules.reward_callables)}; "
                                            "guardrails.rewardCallables)"))  # fmt: skip
    if not rules.trust_remote_code:
        for path, trusted in (("spec.policy", spec.policy.trust_remote_code), *((p, r.trust_remote_code) for p, r in rewards)):
            if trusted:
                out.append((f"{path}.trustRemoteCode", f"running code shipped with a model is not allowed {where} "
                                                       "(guardrails.trustRemoteCode)"))  # fmt: skip
    to = spec.export.to if spec.export is not None else None
    if to is not None and not export_allowed(to, rules.export_prefixes):
        local = "" if to.startswith("s3://") else "; a local path only under an absolute path listed there, which every pod mounts"
        out.append(("spec.export.to", f"'{to}' is not an allowed export location {where} (allowed: "
                                      f"{_shown(rules.export_prefixes)}; guardrails.exportPrefixes{local}); leave "
                                      "`to` out to export into the run's own folder"))  # fmt: skip
    return out
