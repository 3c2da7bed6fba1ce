"""The operator enforces the cluster admin's guardrails (issue 14, defect 7), from the chart's values to
the WarpRun's conditions: kopf in-process against tests/kube.py's emulator, the chart rendered by helm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kwarp.cli import build_parser
from kwarp.core.errors import UserError
from kwarp.core.guardrails import Guardrails
from kwarp.operator import conditions as C
from kwarp.operator.app import guardrails_from
from kwarp.operator.cli import options_from

from .helm_chart import env_of, loaded_chart, operator_container, render
from .kube import RunningOperator, StatusJobRunner, wait_for, wait_value
from .operator_harness import NS, WAIT, Api, finish, jobs_named, options, phase_is, posted, warprun

chart = pytest.fixture(scope="module")(loaded_chart)

RULES = Guardrails.model_validate({
    "images": ["reg.example/kwarp-worker"],
    "tolerationKeys": ["nvidia.com/gpu"],
    "namespaces": {"research": {"images": ["*"]}},
})  # fmt: skip


def image_and_cpu(job: dict[str, Any]) -> tuple[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return container["image"], container["resources"]["limits"]["cpu"]


def test_a_run_the_guardrails_forbid_starts_nothing_and_says_which_field(
    api: Api, runner: StatusJobRunner, store: Path, cluster: Any
) -> None:
    with RunningOperator(cluster, options(guardrails=RULES)):
        api.create(warprun(store, name="bad", resources={"trainer": {"image": "docker.io/evil/miner:1"}},
                           reward={"callable": "evil.module:run"}, policy={"location": "/m", "trustRemoteCode": True}))  # fmt: skip
        st = phase_is(api, "Failed", name="bad")
        invalid = api.condition(C.INVALID, name="bad")
        assert invalid is not None and invalid["status"] == "True" and invalid["reason"] == C.FORBIDDEN, st
        lines = invalid["message"].splitlines()
        assert lines[0] == f"WarpRun {NS}/bad: forbidden by the operator's guardrails (3 fields); ask the cluster admin, or choose what they allow"
        assert [line.split(":")[0].strip(" -") for line in lines[1:]] == [
            "spec.resources.trainer.image", "spec.reward.callable", "spec.policy.trustRemoteCode"]  # fmt: skip
        assert "image 'docker.io/evil/miner:1' is not allowed in namespace 'default'" in lines[1]
        assert api.jobs("bad") == {}
        posted(api, "InvalidSpec", "Warning")


def test_an_export_outside_the_allowed_prefixes_is_forbidden_and_gets_no_job(
    api: Api, runner: StatusJobRunner, store: Path, cluster: Any
) -> None:
    """spec.export.to is held to guardrails.exportPrefixes: another bucket, or a pod's own disk, is refused
    before anything runs (so no `<run>-export` Job can ever exist); a location under a prefix is accepted."""
    rules = RULES.model_copy(update={"export_prefixes": ("s3://kwarp/models",)})
    with RunningOperator(cluster, options(guardrails=rules)):
        api.create(warprun(store, name="out", export={"klBudget": 2.0, "to": "s3://kwarp/runs/team-b/r/uid/base"}))
        api.create(warprun(store, name="local", export={"eta": 0.3, "to": "/tmp/policy"}))
        api.create(warprun(store, name="ok", export={"klBudget": 2.0, "to": "s3://kwarp/models/ok-kl2"}))
        for name, to in (("out", "s3://kwarp/runs/team-b/r/uid/base"), ("local", "/tmp/policy")):
            phase_is(api, "Failed", name=name)
            invalid = api.condition(C.INVALID, name=name)
            assert invalid is not None and invalid["status"] == "True" and invalid["reason"] == C.FORBIDDEN, name
            lines = invalid["message"].splitlines()
            assert len(lines) == 2 and lines[1].startswith(f"  - spec.export.to: '{to}' is not an allowed export "
                                                            "location in namespace 'default' (allowed: s3://kwarp/models;")  # fmt: skip
            assert api.jobs(name) == {}
        wait_value(lambda: api.jobs("ok"), lambda jobs: "ok-prepare" in jobs, WAIT, message="ok-prepare")  # accepted: it starts
        assert (api.condition(C.INVALID, name="ok") or {}).get("status") != "True"


def test_a_mid_run_image_change_is_refused_and_a_forbidden_change_leaves_the_run_going(
    api: Api, runner: StatusJobRunner, store: Path, cluster: Any
) -> None:
    with RunningOperator(cluster, options(guardrails=RULES)):
        api.create(warprun(store, resources={"trainer": {"image": "reg.example/kwarp-worker:1", "cpu": "2"}}))
        finish(api, runner, "demo-prepare")
        jobs = jobs_named(api, "demo-i0-m0", "demo-i0-m1")
        assert image_and_cpu(jobs["demo-i0-m0"]) == ("reg.example/kwarp-worker:1", "2")

        # The image is code: a new one mid-run is refused; the safe part of the same edit (cpu) is taken.
        api.patch_spec({"resources": {"trainer": {"image": "reg.example/kwarp-worker:2", "cpu": "3"}}})
        refused = wait_for(lambda: (c := api.condition(C.SPEC_CHANGE_REFUSED)) and c["status"] == "True" and c, WAIT,
                           message=lambda: f"SpecChangeRefused; status {json.dumps(api.status())[:1500]}")  # fmt: skip
        assert refused["message"].startswith("spec.resources.trainer.image changed while the run is running")
        wait_for(lambda: "demo-i0-m1" in runner.running(), WAIT, message="i0-m1 running")
        runner.fail("demo-i0-m1", exit_code=1, message="boom")
        retry = jobs_named(api, "demo-i0-m1-r1")["demo-i0-m1-r1"]
        assert image_and_cpu(retry) == ("reg.example/kwarp-worker:1", "3")

        # A change the guardrails forbid is refused whole, with the reason; the run goes on as accepted.
        api.patch_spec({"resources": {"trainer": {"image": "reg.example/kwarp-worker:1", "cpu": "4",
                                                  "tolerations": [{"operator": "Exists"}]}}})  # fmt: skip
        invalid = wait_for(lambda: (c := api.condition(C.INVALID)) and c["status"] == "True" and c, WAIT,
                           message=lambda: f"Invalid; status {json.dumps(api.status())[:1500]}")  # fmt: skip
        assert invalid["reason"] == C.FORBIDDEN and "spec.resources.trainer.tolerations[0].key" in invalid["message"]
        assert api.status()["phase"] == "Training"
        runner.fail("demo-i0-m1-r1", exit_code=1, message="boom")
        api.patch_spec({"failurePolicy": {"maxRetries": 2}, "resources": {"trainer": {"cpu": "3", "tolerations": None}}})
        retry = jobs_named(api, "demo-i0-m1-r2")["demo-i0-m1-r2"]
        assert image_and_cpu(retry) == ("reg.example/kwarp-worker:1", "3")
        assert api.condition(C.INVALID)["status"] == "False"  # type: ignore[index]


def test_the_chart_values_reach_the_operator(chart: Any) -> None:
    def rules(values: dict[str, Any]) -> Guardrails:
        env = env_of(operator_container(render(chart, values)))
        return guardrails_from(env["KWARP_GUARDRAILS"])

    default = rules({})
    assert default.images == ("kwarp-worker",) and default.service_accounts == ("kwarp-worker",)
    assert (default.priority_classes, default.toleration_keys, default.node_selector_keys) == ((), (), ())
    assert default.reward_callables == ("kwarp.tasks",) and default.trust_remote_code is False
    assert default.export_prefixes == ()  # only the run's own folder
    custom = rules({"guardrails": {"images": ["reg.example/ml/"], "priorityClasses": ["training-high"],
                                   "exportPrefixes": ["s3://kwarp/models"],
                                   "namespaces": {"research": {"trustRemoteCode": True, "images": ["*"],
                                                               "exportPrefixes": ["*"]}}},
                    "workers": {"image": {"repository": "reg.example/kwarp-worker"}}})  # fmt: skip
    assert custom.images == ("reg.example/ml/", "reg.example/kwarp-worker")
    assert custom.priority_classes == ("training-high",) and custom.export_prefixes == ("s3://kwarp/models",)
    research = custom.for_namespace("research")
    assert research.images == ("*",) and research.trust_remote_code is True and research.priority_classes == ("training-high",)
    assert research.export_prefixes == ("*",)


def test_the_operator_command_reads_its_guardrails_and_cleanup_grace() -> None:
    parser = build_parser("operator")
    env = {"KWARP_GUARDRAILS": json.dumps({"priorityClasses": ["training-high"]}), "KWARP_CLEANUP_GRACE_SECONDS": "30"}
    opts = options_from(parser.parse_args([]), env)
    assert opts.guardrails.priority_classes == ("training-high",) and opts.guardrails.images == ()
    assert opts.cleanup_grace_seconds == 30
    assert options_from(parser.parse_args(["--cleanup-grace-seconds", "0"]), env).cleanup_grace_seconds == 0
    unset = options_from(parser.parse_args([]), {})
    assert unset.guardrails == Guardrails() and unset.cleanup_grace_seconds == 300  # strict by default
    with pytest.raises(UserError, match="KWARP_GUARDRAILS"):
        options_from(parser.parse_args([]), {"KWARP_GUARDRAILS": '{"image": ["typo"]}'})


def test_the_operator_command_takes_namespace_names_not_patterns() -> None:
    parser = build_parser("operator")
    opts = options_from(parser.parse_args(["-n", "team-a", "--namespace", "team-b", "-n", "team-a"]), {})
    assert opts.namespaces == ["team-a", "team-b"]
    for bad in ("team-*", "!team-a", "Team-A", "a" * 64, ""):
        with pytest.raises(UserError, match="--namespace"):
            options_from(parser.parse_args(["--namespace", bad]), {})
