"""The merger on real (tiny, random) GPT-2 and Llama checkpoints: SLERP and LiTI endpoints, norms,
grouping by transformer block, M = 3, bf16, degenerate task vectors, loading the outputs with
transformers, shards, windows and reads (its commands: tests/test_merger_cli.py).

Expected values are computed here, in float64, from the checkpoints' tensors and the formulas of
docs/method.md (tests/merger_refs.py), independently of the merger's streaming code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kwarp.cli import main as kwarp
from kwarp.core import checkpoints
from kwarp.core.checkpoints import (
    MANIFEST,
    CheckpointError,
    build_manifest,
    read_manifest,
    verify,
    write_manifest,
)
from kwarp.merger.cli import merge_folders
from kwarp.merger.groups import group_names
from kwarp.merger.streaming import Output, merge_checkpoints

from .merger_refs import (  # noqa: F401 - the fixtures gpt2, llama and their members
    State,
    angle_deg,
    assert_same_bits,
    bits,
    direct_slerp,
    expected_groups,
    flat,
    gpt2_fixture,
    gpt2_members_fixture,
    llama_fixture,
    llama_members_fixture,
    merge,
    pair_rotation,
)
from .models import load_state, perturbed, tiny_gpt2, tiny_llama, variant, with_task_vector

torch.set_num_threads(1)


# ------------------------------------------------------------------ SLERP and LiTI endpoints


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_lambda_endpoints_return_the_members(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    init = request.getfixturevalue(model)
    members = request.getfixturevalue(f"{model}_members")[:2]
    at0, _ = merge(tmp_path, init, members, lam=0.0)
    at1, _ = merge(tmp_path, init, members, lam=1.0)
    assert_same_bits(load_state(at0), load_state(members[0]))
    assert_same_bits(load_state(at1), load_state(members[1]))


def test_eta_endpoints_are_init_and_the_slerp(gpt2: Path, gpt2_members: list[Path], tmp_path: Path) -> None:
    members = gpt2_members[:2]
    slerp_dir, _ = merge(tmp_path, gpt2, members)
    at0, _ = merge(tmp_path, gpt2, members, eta=0.0)
    at1, _ = merge(tmp_path, gpt2, members, eta=1.0)
    mid, _ = merge(tmp_path, gpt2, members, eta=0.3)
    init, slerp = load_state(gpt2), load_state(slerp_dir)
    assert_same_bits(load_state(at0), init)
    assert_same_bits(load_state(at1), slerp)
    for name, t in load_state(mid).items():
        want = 0.7 * init[name].double() + 0.3 * slerp[name].double()
        torch.testing.assert_close(t.double(), want, rtol=1e-6, atol=1e-7)
    # Several outputs of one pass equal the separate merges.
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for p in (a, b, c):
        p.mkdir()
    merge_checkpoints(gpt2, members, [Output(a, 1.0), Output(b, 0.3), Output(c, 0.0)])
    assert_same_bits(load_state(a), slerp)
    assert_same_bits(load_state(b), load_state(mid))
    assert_same_bits(load_state(c), init)


# ------------------------------------------------------------------ norms and angles


@pytest.mark.parametrize("granularity", ["layer", "tensor", "model"])
def test_orthogonal_equal_norm_task_vectors(gpt2: Path, tmp_path: Path, granularity: str) -> None:
    m1 = with_task_vector(gpt2, tmp_path / "m1", lambda n, t: pair_rotation(n, t)[0])
    m2 = with_task_vector(gpt2, tmp_path / "m2", lambda n, t: pair_rotation(n, t)[1])
    init = load_state(gpt2)
    names = list(init)
    groups = group_names(names, granularity)  # type: ignore[arg-type]
    d1 = {n: load_state(m1)[n].double() - init[n].double() for n in names}
    for method, ratio in (("slerp", 1.0), ("linear", 1 / math.sqrt(2))):
        out, report = merge(tmp_path, gpt2, [m1, m2], method=method, granularity=granularity)
        merged = load_state(out)
        assert [g.name for g in report.groups] == list(groups)
        for g in report.groups:
            assert g.angle_deg == pytest.approx(90.0, abs=1e-3)
            merged_norm = float(flat({n: merged[n].double() - init[n].double() for n in groups[g.name]},
                                     groups[g.name]).norm())
            assert merged_norm == pytest.approx(ratio * float(flat(d1, groups[g.name]).norm()), rel=1e-4), g.name
            assert g.norm_ratio == pytest.approx(ratio, rel=1e-4)


def test_colinear_task_vectors_interpolate_linearly(llama: Path, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    deltas = {n: 1e-2 * torch.randn(t.shape, generator=gen, dtype=torch.float64) for n, t in load_state(llama).items()}
    m1 = with_task_vector(llama, tmp_path / "m1", lambda n, t: deltas[n])
    m2 = with_task_vector(llama, tmp_path / "m2", lambda n, t: 3.0 * deltas[n])
    opposite = with_task_vector(llama, tmp_path / "m3", lambda n, t: -deltas[n])
    init, s1, s2, s3 = (load_state(p) for p in (llama, m1, m2, opposite))
    for other, state in ((m2, s2), (opposite, s3)):
        out, report = merge(tmp_path, llama, [m1, other], lam=0.25)
        assert all(g.combination.steps[0].fallback == "colinear" for g in report.groups)
        for name, t in load_state(out).items():
            want = init[name].double() + 0.75 * (s1[name].double() - init[name].double()) \
                + 0.25 * (state[name].double() - init[name].double())
            torch.testing.assert_close(t.double(), want, rtol=1e-6, atol=1e-7)


def test_layer_granularity_uses_one_angle_per_block(llama: Path, llama_members: list[Path], tmp_path: Path) -> None:
    members = llama_members[:2]
    out, report = merge(tmp_path, llama, members, lam=0.5)
    init, a, b, merged = (load_state(p) for p in (llama, *members, out))
    groups = expected_groups(list(init))
    assert {g.name for g in report.groups} == set(groups)
    assert {"model.layers.0", "model.layers.1", "model.embed_tokens.weight", "lm_head.weight",
            "model.norm.weight"} == set(groups)
    by_name = {g.name: g for g in report.groups}
    for group, names in groups.items():
        d1, d2 = flat(a, names) - flat(init, names), flat(b, names) - flat(init, names)
        assert by_name[group].angle_deg == pytest.approx(angle_deg(d1, d2), abs=1e-4)
        assert by_name[group].norms == pytest.approx((float(d1.norm()), float(d2.norm())), rel=1e-6)
        assert by_name[group].tensors == len(names)
        want = flat(init, names) + direct_slerp(d1, d2, 0.5)
        torch.testing.assert_close(flat(merged, names), want, rtol=1e-6, atol=1e-7)
    # One angle per block: a tensor-wise merge of the same members differs.
    per_tensor, _ = merge(tmp_path, llama, members, lam=0.5, granularity="tensor")
    assert any(not torch.equal(t, merged[n]) for n, t in load_state(per_tensor).items())


def test_three_members_follow_the_iterative_formula(gpt2: Path, gpt2_members: list[Path], tmp_path: Path) -> None:
    out, report = merge(tmp_path, gpt2, gpt2_members)
    init, merged = load_state(gpt2), load_state(out)
    states = [load_state(p) for p in gpt2_members]
    for group, names in expected_groups(list(init)).items():
        base = flat(init, names)
        d = [flat(s, names) - base for s in states]
        running = direct_slerp(d[0], d[1], 1 / 2)
        step2 = angle_deg(running, d[2])
        running = direct_slerp(running, d[2], 1 / 3)
        torch.testing.assert_close(flat(merged, names), base + running, rtol=1e-6, atol=1e-7)
        g = next(g for g in report.groups if g.name == group)
        assert [s.lam for s in g.combination.steps] == [1 / 2, 1 / 3]
        assert g.combination.steps[0].angle_deg == pytest.approx(angle_deg(d[0], d[1]), abs=1e-4)
        assert g.combination.steps[1].angle_deg == pytest.approx(step2, abs=1e-4)
        assert g.pairwise_angles_deg[0][2] == pytest.approx(angle_deg(d[0], d[2]), abs=1e-4)
    assert report.to_json()["step_lambdas"] == [1 / 2, 1 / 3]


# ------------------------------------------------------------------ dtypes and degenerate inputs


def test_bf16_checkpoints_merge_in_float32_and_stay_bf16(tmp_path: Path) -> None:
    init_dir = tiny_llama(tmp_path / "init", seed=3, dtype=torch.bfloat16)
    members = [perturbed(init_dir, tmp_path / f"m{k}", seed=10 + k, scale=5e-2) for k in range(2)]
    out, report = merge(tmp_path, init_dir, members)
    init, a, b, merged = (load_state(p) for p in (init_dir, *members, out))
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    for group, names in expected_groups(list(init)).items():
        d1, d2 = flat(a, names) - flat(init, names), flat(b, names) - flat(init, names)
        want = flat(init, names) + direct_slerp(d1, d2, 0.5)
        got = flat(merged, names)
        # Rounded once to bf16: within half a bf16 ulp of the float64 value (plus float32 noise).
        ulp = torch.finfo(torch.bfloat16).eps * want.abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
        assert bool(((got - want).abs() <= 0.5 * ulp + 1e-6 * want.abs() + 1e-30).all()), group
    _assert_loads(out, tmp_path)


def test_float32_members_of_a_bf16_init_merge_in_float32(tmp_path: Path) -> None:
    """WARP's first iteration: θ_sft in bf16, members saved by the trainer in float32."""
    init_dir = tiny_llama(tmp_path / "init", seed=4, dtype=torch.bfloat16)
    members = [perturbed(init_dir, tmp_path / f"m{k}", seed=20 + k, scale=1e-3, dtype=torch.float32) for k in range(2)]
    out = tmp_path / "slerp"
    merge_folders(init_dir, members, out)
    at0, _ = merge(tmp_path, init_dir, members, eta=0.0)
    mid, _ = merge(tmp_path, init_dir, members, eta=0.3)
    init, a, b, merged = (load_state(p) for p in (init_dir, *members, out))
    assert {t.dtype for t in merged.values()} == {torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    for names in expected_groups(list(init)).values():
        d1, d2 = flat(a, names) - flat(init, names), flat(b, names) - flat(init, names)
        want = flat(init, names) + direct_slerp(d1, d2, 0.5)
        torch.testing.assert_close(flat(merged, names), want, rtol=1e-6, atol=1e-7)
    assert_same_bits(load_state(at0), init)
    assert json.loads((at0 / "config.json").read_text())["dtype"] == "bfloat16"
    for name, t in load_state(mid).items():
        assert t.dtype == torch.float32
        torch.testing.assert_close(t.double(), 0.7 * init[name].double() + 0.3 * merged[name].double(),
                                   rtol=1e-6, atol=1e-7)
    _assert_loads(out, tmp_path)


def test_non_float_tensors_are_copied_and_their_dtype_must_match(tmp_path: Path) -> None:
    def folder(name: str, w: torch.Tensor, pos: torch.Tensor) -> Path:
        path = tmp_path / name
        path.mkdir()
        save_file({"w": w, "pos": pos}, str(path / "model.safetensors"))
        return path

    init = folder("init", torch.zeros(4), torch.arange(4))
    a = folder("a", torch.tensor([1.0, 0, 0, 0]), torch.arange(4) + 7)
    b = folder("b", torch.tensor([0, 1.0, 0, 0]), torch.arange(4) + 9)
    out, report = merge(tmp_path, init, [a, b])
    state = load_state(out)
    assert torch.equal(state["pos"], torch.arange(4))  # θ_init's, whatever the members hold
    torch.testing.assert_close(state["w"], torch.tensor([math.sqrt(0.5), math.sqrt(0.5), 0, 0]))
    assert [g.name for g in report.groups] == ["w"]  # integer buffers are copied and have no angle
    odd = folder("odd", torch.zeros(4), torch.arange(4, dtype=torch.int32))
    with pytest.raises(CheckpointError, match="'pos' is I32, θ_init has I64"):
        merge(tmp_path, init, [a, odd])


@pytest.mark.parametrize("which", ["one", "both"])
def test_zero_task_vector_is_finite_and_contributes_nothing(
    gpt2: Path, gpt2_members: list[Path], tmp_path: Path, which: str
) -> None:
    unchanged = variant(gpt2, tmp_path / "unchanged", lambda n, t: t)
    members = [gpt2_members[0], unchanged] if which == "one" else [unchanged, unchanged]
    out, report = merge(tmp_path, gpt2, members, lam=0.5)
    init, a, merged = load_state(gpt2), load_state(members[0]), load_state(out)
    for g in report.groups:
        assert g.combination.steps[0].fallback == "zero" and g.angle_deg is None
    assert all(g["angle_deg"] is None for g in json.loads(json.dumps(report.to_json()))["groups"])
    for name, t in merged.items():
        assert torch.isfinite(t).all()
        want = init[name].double() + 0.5 * (a[name].double() - init[name].double())
        torch.testing.assert_close(t.double(), want, rtol=1e-6, atol=1e-7)


def test_non_finite_member_is_a_clear_error(gpt2: Path, tmp_path: Path) -> None:
    bad = variant(gpt2, tmp_path / "bad", lambda n, t: t.clone().fill_(float("nan")) if n.endswith("ln_f.weight") else t)
    with pytest.raises(CheckpointError, match=r"not finite.*transformer\.ln_f\.weight"):
        merge(tmp_path, gpt2, [bad, bad])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: tiny_gpt2(p, seed=0, n_embd=48), r"'transformer\.h\.0\.attn\.c_attn\.bias' has shape \[144\], θ_init has \[96\]"),
        (lambda p: tiny_gpt2(p, seed=0, n_layer=3), r"has 12 tensor\(s\) θ_init lacks, e.g. transformer\.h\.2"),
    ],
    ids=["shape", "extra-block"],
)
def test_mismatched_members_are_refused(
    gpt2: Path, gpt2_members: list[Path], tmp_path: Path, mutate: Callable[[Path], Path], message: str
) -> None:
    odd = mutate(tmp_path / "odd")
    with pytest.raises(CheckpointError, match=message):
        merge(tmp_path, gpt2, [gpt2_members[0], odd])
    code = kwarp(["merge", "--init", str(gpt2), "--member", str(gpt2_members[0]), "--member", str(odd),
                  "--out", str(tmp_path / "cli-out")])
    assert code == 2 and not (tmp_path / "cli-out").exists()


# ------------------------------------------------------------------ outputs are usable checkpoints


def _assert_loads(folder: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verify(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok("hello world")["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_outputs_load_with_transformers(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    init = request.getfixturevalue(model)
    members = request.getfixturevalue(f"{model}_members")
    out = tmp_path / "merged"
    report = merge_folders(init, members[:2], out, eta=0.3)
    assert report.outputs == ({"eta": 0.3, "location": str(out)},)
    assert {p.name for p in out.iterdir()} >= {"config.json", "tokenizer.json", MANIFEST}
    assert read_manifest(out).meta["kind"] == "liti"
    _assert_loads(out, tmp_path)


def test_small_shards_are_written_with_an_index(llama: Path, llama_members: list[Path], tmp_path: Path) -> None:
    whole, _ = merge(tmp_path, llama, llama_members[:2])
    sharded = tmp_path / "sharded"
    merge_folders(llama, llama_members[:2], sharded, max_shard_bytes=20_000)
    assert len(list(sharded.glob("model-*.safetensors"))) > 2 and (sharded / "model.safetensors.index.json").exists()
    assert_same_bits(load_state(sharded), load_state(whole))
    _assert_loads(sharded, tmp_path)


@pytest.mark.parametrize("hold_bytes", [0, 1 << 30], ids=["streamed", "held"])
def test_small_windows_and_chunks_give_the_same_merge(
    llama: Path, llama_members: list[Path], tmp_path: Path, hold_bytes: int
) -> None:
    """Groups streamed in many mapped windows, or held, and float chunks (edges inside rows) merge as a whole."""
    members = llama_members[:2]
    whole, report = merge(tmp_path, llama, members)
    kw = {"window_bytes": 1000, "chunk_elements": 37, "hold_bytes": hold_bytes}
    pieces, report_pieces = merge(tmp_path, llama, members, **kw)
    for name, t in load_state(pieces).items():
        torch.testing.assert_close(t, load_state(whole)[name], rtol=1e-6, atol=1e-7)
    for a, b in zip(report.groups, report_pieces.groups, strict=True):
        assert a.angle_deg == pytest.approx(b.angle_deg, abs=1e-6)
    # Worker threads share windows out in whole chunks: the result is the same bit for bit.
    threaded, _ = merge(tmp_path, llama, members, threads=3, **kw)
    assert_same_bits(load_state(threaded), load_state(pieces))
    # η endpoints stay copies whatever the windows.
    at0, _ = merge(tmp_path, llama, members, eta=0.0, **kw)
    assert_same_bits(load_state(at0), load_state(llama))


def _bytes_read_by_this_process() -> int:
    """rchar of /proc/self/io: bytes this process asked read()/pread() for (page cache included)."""
    return next(int(line.split()[1]) for line in Path("/proc/self/io").read_text().splitlines()
                if line.startswith("rchar:"))


def test_each_input_is_read_once_and_the_output_hashed_while_written(
    llama: Path, llama_members: list[Path], tmp_path: Path
) -> None:
    members = llama_members[:2]
    tensor_bytes = sum(t.numel() * t.element_size() for f in (llama, *members) for t in load_state(f).values())
    out = tmp_path / "slerp"
    out.mkdir()
    report = merge_checkpoints(llama, members, [Output(out, 1.0)])
    # Every tensor of θ_init and the members was read exactly once (the Gram matrix and the sum share it).
    assert report.io.bytes_read == tensor_bytes
    # The shards' sha256 were taken while they were written: the manifest reads no shard again (the
    # kernel's count of bytes this process read grows by less than one shard: config and index only).
    shard_bytes = min(p.stat().st_size for p in out.glob("*.safetensors"))
    before = _bytes_read_by_this_process()
    manifest = write_manifest(out)
    assert _bytes_read_by_this_process() - before < shard_bytes
    assert manifest == build_manifest(out)  # and the recorded digests are the files' own
    assert not (out / checkpoints.DIGESTS).exists()
    verify(out)


def test_a_shard_changed_after_writing_is_hashed_again(llama: Path, llama_members: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "slerp"
    out.mkdir()
    merge_checkpoints(llama, llama_members[:2], [Output(out, 1.0)])
    shard = next(out.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size: only the file's identity tells the recorded digest is stale
    manifest = write_manifest(out)
    assert next(e for e in manifest.files if e.name == shard.name).sha256 == checkpoints.sha256_file(shard)

