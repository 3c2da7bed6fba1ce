"""The merger's commands on real (tiny, random) GPT-2 checkpoints: `kwarp merge` on folders (a checkpoint
and a report), its argument parsing, and the task mode (`kwarp merge --iteration`) against a file://
store: SLERP, the next iteration's init and the report, idempotence, resumption and its metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from kwarp.cli import main as kwarp
from kwarp.core.checkpoints import read_manifest, verify
from kwarp.core.spec import parse
from kwarp.merger.cli import parse_size, run_task
from kwarp.merger.groups import block_prefix
from kwarp.store import FileStore, layout

from .merger_refs import (  # noqa: F401 - the fixtures gpt2 and gpt2_members
    assert_same_bits,
    expected_groups,
    gpt2_fixture,
    gpt2_members_fixture,
    merge,
)
from .models import load_state, perturbed

torch.set_num_threads(1)


# ------------------------------------------------------------------ the folder CLI


def test_folder_cli_writes_a_checkpoint_and_a_report(
    gpt2: Path, gpt2_members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report_file = tmp_path / "out", tmp_path / "merge.json"
    argv = ["merge", "--init", str(gpt2), "--member", str(gpt2_members[0]), "--member", str(gpt2_members[1]),
            "--out", str(out), "--lambda", "0.5", "--granularity", "layer", "--report", str(report_file)]
    assert kwarp(argv) == 0
    verify(out)
    doc = json.loads(report_file.read_text())
    assert doc["method"] == "slerp" and doc["members"] == 2 and doc["lambda"] == 0.5
    assert [g["name"] for g in doc["groups"]] == list(expected_groups(list(load_state(gpt2))))
    assert doc["bytes"] == doc["input_bytes"] + doc["bytes_written"] > 0 and doc["seconds"] > 0
    assert "transformer.h.1" in capsys.readouterr().out
    # An existing output is not replaced silently.
    assert kwarp(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert kwarp([*argv, "--overwrite"]) == 0


def test_cli_rejects_mixed_or_missing_modes(gpt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kwarp(["merge", "--iteration", "0", "--init", str(gpt2)]) == 2
    assert "--init" in capsys.readouterr().err
    assert kwarp(["merge", "--init", str(gpt2)]) == 2
    assert "--member" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "size"), [("512MiB", 512 << 20), ("2GB", 2_000_000_000), ("1048576", 1 << 20),
                                            ("1.5 KiB", 1536), ("64k", 64_000)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("model.layers.3.mlp.up_proj.weight", "model.layers.3"),
        ("transformer.h.11.attn.c_attn.bias", "transformer.h.11"),
        ("gpt_neox.layers.0.attention.dense.weight", "gpt_neox.layers.0"),
        ("model.decoder.layers.2.fc1.weight", "model.decoder.layers.2"),
        ("transformer.blocks.4.ffn.up_proj.weight", "transformer.blocks.4"),
        ("encoder.block.0.layer.1.DenseReluDense.wi.weight", "encoder.block.0"),
        ("model.vision_tower.encoder.layers.7.mlp.fc1.weight", "model.vision_tower.encoder.layers.7"),
        ("model.embed_tokens.weight", None),
        ("lm_head.weight", None),
        ("gpt_neox.layers_norm.0.weight", None),
        ("mlp.dense_h_to_4h.3.weight", None),
    ],
)
def test_block_prefix(name: str, prefix: str | None) -> None:
    assert block_prefix(name) == prefix


# ------------------------------------------------------------------ task mode


def _run_doc(tmp_path: Path, iterations: int = 2, eta: float = 0.3) -> Path:
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "tiny"},
        "spec": {
            "policy": {"location": str(tmp_path / "sft")},
            "reward": {"callable": "kwarp.tasks:reward"},
            "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")},
            "warp": {"iterations": iterations, "policies": 2, "steps": 1, "litiEta": eta},
            "storage": {"url": f"file://{tmp_path / 'store'}"},
        },
    }
    path = tmp_path / "warprun.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_task_mode_writes_slerp_next_init_and_report_and_is_idempotent(
    gpt2: Path, gpt2_members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = _run_doc(tmp_path)
    store = FileStore(tmp_path / "store")
    store.put_checkpoint(gpt2, layout.base("tiny"))
    for m in range(2):
        store.put_checkpoint(gpt2_members[m], layout.member_final("tiny", 0, m))

    assert kwarp(["merge", "--iteration", "0", "--spec", str(spec_file)]) == 0
    slerp_key, next_key, report_key = layout.slerp("tiny", 0), layout.init("tiny", 1), layout.merge_report("tiny", 0)
    assert store.has_checkpoint(slerp_key) and store.has_checkpoint(next_key)
    doc = store.get_json(report_key)
    assert doc["iteration"] == 0 and doc["eta"] == 0.3 and doc["lambda"] == 0.5 and doc["granularity"] == "layer"
    assert doc["inputs"] == {"init": layout.base("tiny"), "members": [layout.member_final("tiny", 0, m) for m in (0, 1)]}
    assert [o["location"] for o in doc["outputs"]] == [slerp_key, next_key]
    assert all(set(g) >= {"name", "angle_deg", "norms"} for g in doc["groups"])

    init, slerp, nxt = (load_state(store.path(k)) for k in (layout.base("tiny"), slerp_key, next_key))
    reference, _ = merge(tmp_path, gpt2, gpt2_members[:2])
    assert_same_bits(slerp, load_state(reference))
    for name, t in nxt.items():
        torch.testing.assert_close(t.double(), 0.7 * init[name].double() + 0.3 * slerp[name].double(),
                                   rtol=1e-6, atol=1e-7)
    assert read_manifest(store.path(next_key)).meta["kind"] == "liti"

    # Idempotent: a second run changes nothing.
    manifests = {k: read_manifest(store.path(k)).digest for k in (slerp_key, next_key)}
    report_mtime = store.path(report_key).stat().st_mtime_ns
    capsys.readouterr()
    assert kwarp(["merge", "--iteration", "0", "--spec", str(spec_file)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {k: read_manifest(store.path(k)).digest for k in manifests} == manifests
    assert store.path(report_key).stat().st_mtime_ns == report_mtime

    # Interrupted after slerp(0) was published: the next init is rebuilt from the stored slerp, identically.
    store.delete_prefix(next_key)
    store.delete_prefix(report_key)
    assert kwarp(["merge", "--iteration", "0", "--spec", str(spec_file)]) == 0
    assert read_manifest(store.path(next_key)).digest == manifests[next_key]
    assert read_manifest(store.path(slerp_key)).digest == manifests[slerp_key]
    assert store.get_json(report_key)["groups"] == doc["groups"]

    # The last iteration writes slerp and the report, and no next init.
    for m in range(2):
        store.put_checkpoint(perturbed(store.path(next_key), tmp_path / f"i1-m{m}", seed=50 + m),
                             layout.member_final("tiny", 1, m))
    report = run_task(parse(yaml.safe_load(spec_file.read_text())), 1)
    assert report is not None and report.eta is None
    assert store.has_checkpoint(layout.slerp("tiny", 1)) and not store.exists(layout.init("tiny", 2))
    assert store.get_json(layout.merge_report("tiny", 1))["eta"] is None


def test_task_mode_needs_every_member(gpt2: Path, gpt2_members: list[Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = _run_doc(tmp_path)
    store = FileStore(tmp_path / "store")
    store.put_checkpoint(gpt2, layout.base("tiny"))
    store.put_checkpoint(gpt2_members[0], layout.member_final("tiny", 0, 0))
    assert kwarp(["merge", "--iteration", "0", "--spec", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "tiny/iter-0/member-1/final" in err and "kwarp train --iteration 0" in err
    assert not store.exists(layout.merge_report("tiny", 0)) and not store.exists(layout.slerp("tiny", 0))
    assert kwarp(["merge", "--iteration", "5", "--spec", str(spec_file)]) == 2


def test_task_mode_pushes_its_metrics(
    gpt2: Path, gpt2_members: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .prom import Pushgateway

    gateway = Pushgateway.start(tmp_path)
    try:
        spec_file = _run_doc(tmp_path, iterations=1)
        store = FileStore(tmp_path / "store")
        store.put_checkpoint(gpt2, layout.base("tiny"))
        for m in range(2):
            store.put_checkpoint(gpt2_members[m], layout.member_final("tiny", 0, m))
        monkeypatch.setenv("KWARP_PUSHGATEWAY", gateway.address)
        monkeypatch.setenv("KWARP_NAMESPACE", "team-a")
        assert kwarp(["merge", "--iteration", "0", "--spec", str(spec_file)]) == 0
        groups = [g["labels"] for g in gateway.groups()]
        assert {"job": "kwarp", "namespace": "team-a", "run": "tiny", "iteration": "0", "component": "merger"} in groups
        text = gateway.exposition()
        doc = store.get_json(layout.merge_report("tiny", 0))

        def value(metric: str) -> float:
            match = re.search(rf"^{metric}\{{(.*)\}} (\S+)$", text, re.MULTILINE)
            assert match is not None, metric
            assert all(f'{k}="{v}"' in match.group(1)
                       for k, v in {"namespace": "team-a", "run": "tiny", "iteration": "0"}.items())
            return float(match.group(2))

        assert value("kwarp_merger_slerp_angle_degrees_count") == len(doc["groups"])
        assert value("kwarp_merger_processed_bytes_total") == doc["bytes"]
        assert value("kwarp_merger_duration_seconds") == pytest.approx(doc["seconds"])
    finally:
        gateway.stop()
