"""The WarpRun spec: defaults are the paper's, bad fields are named, the CRD round-trips a document."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kwarp.core.spec import SpecError, WarpRun, changed_fields, from_cli, load, member_seed, parse

MINIMAL = {
    "apiVersion": "kwarp.dev/v1alpha1",
    "kind": "WarpRun",
    "metadata": {"name": "gemma-warp"},
    "spec": {
        "policy": {"location": "s3://models/gemma-2b-sft"},
        "reward": {"location": "s3://models/gemma-rm"},
        "data": {"train": "s3://data/train.jsonl", "eval": "s3://data/eval.jsonl"},
        "storage": {"url": "s3://kwarp/runs", "endpoint": "minio.minio:9000", "secretName": "kwarp-s3"},
    },
}


def doc(**patches: object) -> dict:
    """MINIMAL with dotted-path patches, e.g. doc(**{"spec.warp.beta": 0.2})."""
    d = copy.deepcopy(MINIMAL)
    for path, value in patches.items():
        node = d
        *head, last = path.split(".")
        for key in head:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last)
        else:
            node[last] = value
    return d


_DELETE = object()


def test_paper_defaults() -> None:
    run = parse(MINIMAL)
    w, t, e = run.spec.warp, run.spec.training, run.spec.evaluation
    assert (w.iterations, w.policies, w.beta, w.ema_rate, w.liti_eta) == (3, 2, 0.1, 0.01, 0.3)
    assert w.anchor == "ema" and w.slerp.granularity == "layer"
    assert w.slerp_lambda == 0.5
    assert [w.steps_for(i) for i in range(5)] == [9000, 7000, 7000, 5000, 5000]
    assert (t.learning_rate, t.warmup_steps, t.temperature, t.batch_size) == (1e-6, 100, 0.9, 128)
    assert t.samples_per_prompt >= 2 and t.baseline == "leave-one-out"
    assert e.etas == [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]
    assert run.spec.policy.trust_remote_code is False and run.spec.reward.trust_remote_code is False
    assert run.spec.cleanup == "Retain" and run.spec.suspend is False
    assert run.spec.resources.trainer.gpus == 1 and run.spec.resources.merger.gpus == 0


def test_lambda_defaults_to_one_over_m() -> None:
    assert parse(doc(**{"spec.warp.policies": 4})).spec.warp.slerp_lambda == 0.25
    assert parse(doc(**{"spec.warp.slerp": {"lambda": 0.3}})).spec.warp.slerp_lambda == 0.3


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"spec.warp.betta": 0.1}, "spec.warp.betta", "unknown field"),
        ({"spec.warp.beta": -1}, "spec.warp.beta", "greater than or equal to 0"),
        ({"spec.warp.anchor": "kl"}, "spec.warp.anchor", "'ema', 'sft' or 'none'"),
        ({"spec.warp.policies": 0}, "spec.warp.policies", "greater than or equal to 1"),
        ({"spec.warp.steps": [100, 0]}, "spec.warp.steps", ">= 1"),
        ({"spec.warp.emaRate": 1.5}, "spec.warp.emaRate", "less than or equal to 1"),
        ({"spec.warp.litiEta": 2}, "spec.warp.litiEta", "less than or equal to 1"),
        ({"spec.warp.slerp": {"granularity": "block"}}, "spec.warp.slerp.granularity", "'layer', 'tensor' or 'model'"),
        ({"spec.training.samplesPerPrompt": 1}, "spec.training.samplesPerPrompt", "baseline"),
        ({"spec.training.batchSize": 10, "spec.training.microBatchSize": 3}, "spec.training.microBatchSize", "divide"),
        ({"spec.evaluation.etas": [0.0, 1.5]}, "spec.evaluation.etas", "[0, 1]"),
        ({"spec.evaluation.etas": []}, "spec.evaluation.etas", "at least one"),
        ({"spec.policy.location": "ftp://x/y"}, "spec.policy.location", "unsupported scheme"),
        ({"spec.policy": {}}, "spec.policy.location", "required"),
        ({"spec.reward": {"location": "a", "callable": "m:f"}}, "spec.reward", "exactly one"),
        ({"spec.reward": {"callable": "not a callable"}}, "spec.reward.callable", "package.module:function"),
        ({"spec.evaluation.goldReward": {"callable": "nope"}}, "spec.evaluation.goldReward.callable", "module:function"),
        ({"spec.evaluation.goldReward": {}}, "spec.evaluation.goldReward", "exactly one"),
        ({"spec.evaluation.goldReward": {"location": "ftp://x/y"}}, "spec.evaluation.goldReward.location", "scheme"),
        ({"spec.storage": {"url": "s3:///nobucket"}}, "spec.storage.url", "bucket"),
        ({"spec.storage": {"url": "/tmp/x", "secretName": "s"}}, "spec.storage.endpoint and spec.storage.secretName", "s3://"),
        ({"spec.resources": {"trainer": {"memory": "lots"}}}, "spec.resources.*.memory", "quantity"),
        ({"spec.cleanup": "Purge"}, "spec.cleanup", "'Retain' or 'Delete'"),
        ({"spec.export": {}}, "spec.export", "exactly one of 'klBudget'"),
        ({"spec.export": {"klBudget": 1.0, "eta": 0.3}}, "spec.export", "exactly one of 'klBudget'"),
        ({"spec.export": {"klBudget": -1.0}}, "spec.export.klBudget", "greater than or equal to 0"),
        ({"spec.export": {"eta": 1.5}}, "spec.export.eta", "less than or equal to 1"),
        ({"spec.export": {"eta": 0.3, "to": "s3://bucket"}}, "spec.export.to", "s3://bucket/key"),
        ({"spec.export": {"eta": 0.3, "to": "hf://org/name"}}, "spec.export.to", "not to hf://"),
        ({"metadata.name": "Bad_Name"}, "metadata.name", "DNS-1123"),
        ({"metadata.name": "bad-name\n"}, "metadata.name", "DNS-1123"),  # `$` alone would let a newline end it
        ({"metadata.name": "x" * 41}, "metadata.name", "at most 40"),
        ({"kind": "Job"}, "kind", "WarpRun"),
    ],
)
def test_invalid_fields_are_named(patch: dict, field: str, hint: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(doc(**patch))
    message = str(info.value)
    assert field in message, message
    assert hint in message, message


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse(doc(**{"spec.warp.beta": -1, "spec.training.temperature": 0}))
    assert "2 problems" in str(info.value)
    assert "spec.warp.beta" in str(info.value) and "spec.training.temperature" in str(info.value)


def test_load_resolves_relative_paths(tmp_path: Path) -> None:
    d = doc(**{"spec.policy.location": "models/sft", "spec.data.train": "data/t.jsonl", "spec.storage": {"url": "runs"},
               "spec.evaluation.goldReward": {"location": "models/judge"}})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(d))
    run = load(tmp_path / "run.yaml")
    assert run.spec.policy.location == str(tmp_path / "models/sft")
    assert run.spec.evaluation.gold_reward.location == str(tmp_path / "models/judge")
    assert run.spec.data.train == str(tmp_path / "data/t.jsonl")
    assert run.spec.data.eval == "s3://data/eval.jsonl"
    assert run.spec.storage.url == str(tmp_path / "runs")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump_all([MINIMAL, MINIMAL]))
    with pytest.raises(SpecError, match="exactly one"):
        load(tmp_path / "two.yaml")


def test_document_round_trip() -> None:
    run = parse(MINIMAL)
    again = parse(run.to_document())
    assert again == run
    assert run.to_document()["spec"]["warp"]["emaRate"] == 0.01  # camelCase out


def test_from_cli_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWARP_SPEC", json.dumps(MINIMAL))
    assert from_cli(None).name == "gemma-warp"
    monkeypatch.setenv("KWARP_SPEC", "{not json")
    with pytest.raises(SpecError, match="KWARP_SPEC"):
        from_cli(None)
    monkeypatch.delenv("KWARP_SPEC")
    with pytest.raises(SpecError, match="--spec"):
        from_cli(None)


def test_spec_is_frozen() -> None:
    run = parse(MINIMAL)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        run.spec.warp.beta = 0.5  # type: ignore[misc]


def test_member_seeds_differ() -> None:
    spec = parse(MINIMAL).spec
    seeds = {member_seed(spec, i, m) for i in range(3) for m in range(4)}
    assert len(seeds) == 12


def test_changed_fields() -> None:
    a = parse(MINIMAL).spec
    b = parse(doc(**{"spec.warp.beta": 0.5, "spec.suspend": True, "spec.failurePolicy": {"maxRetries": 5}})).spec
    assert changed_fields(a, b) == ["spec.warp"]
    assert changed_fields(a, a) == []


def test_warprun_schema_is_the_same_model() -> None:
    assert WarpRun.model_fields["spec"].annotation.__name__ == "WarpRunSpec"  # type: ignore[union-attr]


def test_yaml_numbers_read_as_kubectl_reads_them(tmp_path: Path) -> None:
    """`learningRate: 1e-5` is a number for kubectl (and so for the API server); the strict parse needs it
    to be one here too, though PyYAML alone reads it as a string."""
    text = yaml.safe_dump(MINIMAL) + ""
    text = text.replace("  policy:", "  training:\n    learningRate: 1e-5\n    temperature: 7E-1\n  policy:", 1)
    (tmp_path / "run.yaml").write_text(text)
    training = load(tmp_path / "run.yaml").spec.training
    assert (training.learning_rate, training.temperature, training.batch_size) == (1e-5, 0.7, 128)
    with pytest.raises(SpecError, match="spec.training.batchSize"):
        parse(doc(**{"spec.training.batchSize": "128"}))
