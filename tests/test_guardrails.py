"""Guardrails, table-driven: (spec choices, rules, namespace) -> the fields forbidden, and why."""

from __future__ import annotations

from typing import Any

import pytest

from kwarp.core.guardrails import Guardrails, callable_allowed, image_allowed, violations
from kwarp.core.spec import keep_images, parse, unsafe_changes

from .test_spec import doc


def spec(**patches: Any):  # noqa: ANN201
    return parse(doc(**patches)).spec


def trainer(**pod: Any) -> dict[str, Any]:
    return {"spec.resources": {"trainer": pod}}


RULES = Guardrails.model_validate({
    "images": ["reg.example/kwarp-worker", "reg.example/team-a/"],
    "serviceAccounts": ["kwarp-worker"],
    "priorityClasses": ["training-high"],
    "tolerationKeys": ["nvidia.com/gpu"],
    "nodeSelectorKeys": ["nvidia.com/gpu.product"],
    "rewardCallables": ["kwarp.tasks", "acme.rewards:score"],
    "exportPrefixes": ["s3://kwarp/models", "/mnt/shared/models"],
    "namespaces": {"research": {"images": ["*"], "trustRemoteCode": True, "exportPrefixes": ["*"]}},
})  # fmt: skip


def export_to(to: str | None) -> dict[str, Any]:
    return {"spec.export": {"klBudget": 2.0, **({"to": to} if to is not None else {})}}

CASES = [
    # (name, spec patches, namespace, forbidden fields)
    ("nothing chosen: the operator's settings apply", {}, "team-a", []),
    ("an allowed repository, any tag or digest", trainer(image="reg.example/kwarp-worker:1.2"), "team-a", []),
    ("by digest", trainer(image="reg.example/kwarp-worker@sha256:" + "a" * 64), "team-a", []),
    ("a longer name is another repository", trainer(image="reg.example/kwarp-worker-evil:1"), "team-a",
     ["spec.resources.trainer.image"]),
    ("under an allowed prefix", trainer(image="reg.example/team-a/custom:3"), "team-a", []),
    ("another registry", trainer(image="docker.io/evil/miner:latest"), "team-a", ["spec.resources.trainer.image"]),
    ("a namespace that allows every image", trainer(image="docker.io/any/thing:1"), "research", []),
    ("service account", trainer(serviceAccountName="cluster-admin-sa"), "team-a",
     ["spec.resources.trainer.serviceAccountName"]),
    ("the allowed service account", trainer(serviceAccountName="kwarp-worker"), "team-a", []),
    ("priority class", trainer(priorityClassName="system-cluster-critical"), "team-a",
     ["spec.resources.trainer.priorityClassName"]),
    ("tolerations: an allowed key and a key-less one", trainer(tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists"}]), "team-a",
     ["spec.resources.trainer.tolerations[1].key"]),
    ("node selector keys", trainer(nodeSelector={"nvidia.com/gpu.product": "H100", "kubernetes.io/hostname": "n1"}),
     "team-a", ["spec.resources.trainer.nodeSelector"]),
    ("bundled reward callable", {"spec.reward": {"callable": "kwarp.tasks.sentiment:reward"}}, "team-a", []),
    ("an exact allowed callable", {"spec.reward": {"callable": "acme.rewards:score"}}, "team-a", []),
    ("another function of that module", {"spec.reward": {"callable": "acme.rewards:other"}}, "team-a",
     ["spec.reward.callable"]),
    ("any importable module", {"spec.reward": {"callable": "os:system"}}, "team-a", ["spec.reward.callable"]),
    ("a module that only starts like an allowed one", {"spec.reward": {"callable": "kwarp.tasksevil:f"}}, "team-a",
     ["spec.reward.callable"]),
    ("gold reward callable too", {"spec.evaluation.goldReward": {"callable": "evil.mod:f"}}, "team-a",
     ["spec.evaluation.goldReward.callable"]),
    ("trustRemoteCode off by the rules", {"spec.policy.trustRemoteCode": True}, "team-a", ["spec.policy.trustRemoteCode"]),
    ("trustRemoteCode on a reward model", {"spec.reward": {"location": "s3://b/rm", "trustRemoteCode": True}},
     "team-a", ["spec.reward.trustRemoteCode"]),
    ("trustRemoteCode where the namespace allows it", {"spec.policy.trustRemoteCode": True}, "research", []),
    ("merger and evaluation are checked as well", {"spec.resources": {"merger": {"image": "x/y:1"},
                                                                       "evaluation": {"priorityClassName": "p"}}},
     "team-a", ["spec.resources.merger.image", "spec.resources.evaluation.priorityClassName"]),
    # spec.export.to: like storage.url, by whole path segments; a local path only where every pod mounts it.
    ("export into the run's own folder (to left out)", export_to(None), "team-a", []),
    ("export under an allowed prefix", export_to("s3://kwarp/models/gemma-kl2"), "team-a", []),
    ("export to a sibling that only starts like it", export_to("s3://kwarp/models-evil/x"), "team-a", ["spec.export.to"]),
    ("export to another bucket", export_to("s3://other/x"), "team-a", ["spec.export.to"]),
    ("export over another run's folder in the store", export_to("s3://kwarp/runs/team-b/r/uid/base"), "team-a",
     ["spec.export.to"]),
    ("export escaping the prefix with ..", export_to("s3://kwarp/models/../runs/x"), "team-a", ["spec.export.to"]),
    ("export to a listed mounted path", export_to("/mnt/shared/models/p"), "team-a", []),
    ("export to a listed mounted path as file://", export_to("file:///mnt/shared/models/p"), "team-a", []),
    ("export to a pod's own disk", export_to("/tmp/p"), "team-a", ["spec.export.to"]),
    ("'*' allows any bucket", export_to("s3://any/x"), "research", []),
    ("'*' never allows a local path", export_to("/mnt/shared/models/p"), "research", ["spec.export.to"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "patches", "namespace", "forbidden"), CASES, ids=[c[0] for c in CASES])
def test_violations(name: str, patches: dict[str, Any], namespace: str, forbidden: list[str]) -> None:
    found = violations(spec(**patches), namespace, RULES)
    assert [f for f, _ in found] == forbidden
    for field, why in found:
        assert f"in namespace '{namespace}'" in why and "guardrails." in why, (field, why)


def test_the_defaults_allow_nothing_but_the_bundled_rewards() -> None:
    default = Guardrails()
    chosen = spec(**{"spec.resources": {"trainer": {"image": "reg/x:1", "serviceAccountName": "sa",
                                                    "priorityClassName": "p", "nodeSelector": {"k": "v"},
                                                    "tolerations": [{"key": "k", "operator": "Exists"}]}},
                     "spec.policy.trustRemoteCode": True})  # fmt: skip
    assert [f for f, _ in violations(chosen, "default", default)] == [
        "spec.resources.trainer.image", "spec.resources.trainer.serviceAccountName",
        "spec.resources.trainer.priorityClassName", "spec.resources.trainer.tolerations[0].key",
        "spec.resources.trainer.nodeSelector", "spec.policy.trustRemoteCode"]  # fmt: skip
    assert violations(spec(**{"spec.reward": {"callable": "kwarp.tasks.sentiment:true_score"}}), "default", default) == []
    why = dict(violations(chosen, "default", default))["spec.resources.trainer.image"]
    assert why == "image 'reg/x:1' is not allowed in namespace 'default' (allowed: none; guardrails.images)"
    # An export goes into the run's own folder unless the admin lists where else it may go.
    assert violations(spec(**export_to(None)), "default", default) == []
    assert violations(spec(**export_to("s3://kwarp/models/x")), "default", default) == [(
        "spec.export.to", "'s3://kwarp/models/x' is not an allowed export location in namespace 'default' "
        "(allowed: none; guardrails.exportPrefixes); leave `to` out to export into the run's own folder")]  # fmt: skip
    local = dict(violations(spec(**export_to("/tmp/p")), "default", default))["spec.export.to"]
    assert "a local path only under an absolute path listed there, which every pod mounts" in local


@pytest.mark.parametrize("entry", ["models/", "s3://", "hf://org/m", ""])
def test_export_prefixes_are_storage_urls(entry: str) -> None:
    with pytest.raises(ValueError, match="exportPrefixes"):
        Guardrails.model_validate({"exportPrefixes": [entry]})
    with pytest.raises(ValueError, match="exportPrefixes"):
        Guardrails.model_validate({"namespaces": {"n": {"exportPrefixes": [entry]}}})


@pytest.mark.parametrize(("image", "allowed", "ok"), [
    ("a/b:1", ("a/b",), True), ("a/b", ("a/b",), True), ("a/b/c:1", ("a/b",), False), ("a/bc:1", ("a/b",), False),
    ("a/b/c:1", ("a/",), True), ("anything", ("*",), True), ("a/b:1", (), False),
])  # fmt: skip
def test_image_allowed(image: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert image_allowed(image, allowed) is ok


@pytest.mark.parametrize(("target", "allowed", "ok"), [
    ("kwarp.tasks.sentiment:reward", ("kwarp.tasks",), True), ("kwarp.tasks:f", ("kwarp.tasks",), True),
    ("kwarp.taskset:f", ("kwarp.tasks",), False), ("kwarp:f", ("kwarp.tasks",), False),
    ("m:f", ("m:f",), True), ("m:g", ("m:f",), False), ("any:thing", ("*",), True),
])  # fmt: skip
def test_callable_allowed(target: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert callable_allowed(target, allowed) is ok


def test_a_mid_run_image_change_is_an_unsafe_change() -> None:
    old = spec(**trainer(image="reg.example/kwarp-worker:1", cpu="4"))
    assert unsafe_changes(old, spec(**trainer(image="reg.example/kwarp-worker:1", cpu="8"))) == []  # resources: safe
    new = spec(**trainer(image="reg.example/kwarp-worker:2", cpu="8"))
    assert unsafe_changes(old, new) == ["spec.resources.trainer.image"]
    assert unsafe_changes(old, spec(**trainer(cpu="4"))) == ["spec.resources.trainer.image"]  # dropped: also a change
    kept = keep_images(old, new.resources)  # the safe part goes through, the image stays
    assert (kept.trainer.image, kept.trainer.cpu) == ("reg.example/kwarp-worker:1", "8")
