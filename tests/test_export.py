"""`kwarp export`: the choice on a front (pure, table-tested) and the export of a stored run end to end.

The end-to-end tests build a run's store from tiny real models (θ_sft and a last SLERP whose task
vector raises the logits of vowels, so the reward, the share of vowels, grows along the front), let
`kwarp eval` measure the real front, then export from it and check the written policy against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kwarp.cli import main as kwarp_main
from kwarp.core.checkpoints import verify
from kwarp.core.front import Choice, FrontError, FrontPoint, at_eta, points_of, within_budget
from kwarp.core.spec import parse
from kwarp.store import layout, open_store
from tests.models import perturbed, tiny_gpt2, tiny_tokenizer, variant

from .s3server import S3Server, s3_server

s3 = pytest.fixture(scope="module")(s3_server)


def _front(*rows: tuple[float, float, float]) -> list[FrontPoint]:
    return [FrontPoint(eta=e, reward=r, kl=k) for e, r, k in rows]


# A front as WARP draws it: reward and KL both grow with η.
RISING = _front((0.0, 1.0, 0.0), (0.25, 1.5, 1.0), (0.5, 1.8, 3.0), (1.0, 2.0, 7.0))


@pytest.mark.parametrize(
    ("points", "budget", "eta", "reward", "kl", "between"),
    [
        # The budget falls between two evaluated points: η is interpolated where the line meets KL = K.
        (RISING, 2.0, 0.375, 1.65, 2.0, (0.25, 0.5)),
        (RISING, 5.0, 0.75, 1.9, 5.0, (0.5, 1.0)),
        # On an evaluated point, or beyond the front: that point.
        (RISING, 3.0, 0.5, 1.8, 3.0, (0.5, 0.5)),
        (RISING, 100.0, 1.0, 2.0, 7.0, (1.0, 1.0)),
        (RISING, 0.0, 0.0, 1.0, 0.0, (0.0, 0.0)),
        # Reward hacking: past η = 0.5 the reward falls; a larger budget must not buy less reward.
        (_front((0.0, 1.0, 0.0), (0.5, 2.0, 2.0), (1.0, 1.5, 6.0)), 4.0, 0.5, 2.0, 2.0, (0.5, 0.5)),
        # Noisy KL, not monotone in η: past the first crossing the front comes back within the budget, and the
        # best point is the second crossing, not the first.
        (_front((0.0, 1.0, 0.0), (0.3, 1.2, 2.5), (0.6, 1.6, 1.5), (1.0, 2.0, 4.0)), 2.0, 0.68, 1.68, 2.0, (0.6, 1.0)),
        # Equal reward: the smaller η (less drift) wins.
        (_front((0.0, 1.0, 0.0), (0.5, 2.0, 1.0), (1.0, 2.0, 2.0)), 5.0, 0.5, 2.0, 1.0, (0.5, 0.5)),
    ],
)
def test_within_budget_picks_the_most_reward_whose_kl_fits(
    points: list[FrontPoint], budget: float, eta: float, reward: float, kl: float, between: tuple[float, float]
) -> None:
    choice = within_budget(points, budget)
    assert choice.eta == pytest.approx(eta)
    assert choice.reward == pytest.approx(reward) and choice.kl == pytest.approx(kl)
    assert choice.between == between
    assert choice.kl <= budget + 1e-12


def test_within_budget_refuses_what_the_front_cannot_give() -> None:
    no_sft = _front((0.2, 1.1, 0.8), (1.0, 2.0, 7.0))
    with pytest.raises(FrontError, match=r"least KL evaluated is 0.8 \(η = 0.2\)"):
        within_budget(no_sft, 0.5)
    with pytest.raises(FrontError, match="finite number >= 0"):
        within_budget(RISING, -1.0)
    with pytest.raises(FrontError, match="no evaluated point"):
        within_budget([], 1.0)


@pytest.mark.parametrize(
    ("eta", "expected"),
    [
        (0.5, Choice(0.5, 1.8, 3.0, None, (0.5, 0.5), "η = 0.5 as asked")),
        (0.75, Choice(0.75, 1.9, 5.0, None, (0.5, 1.0), "η = 0.75 as asked")),
    ],
)
def test_at_eta_reads_the_front_between_its_points(eta: float, expected: Choice) -> None:
    assert at_eta(RISING, eta) == expected


def test_at_eta_outside_the_evaluated_range_predicts_nothing() -> None:
    choice = at_eta(_front((0.2, 1.1, 0.8), (1.0, 2.0, 7.0)), 0.1)
    assert (choice.eta, choice.reward, choice.kl) == (0.1, None, None)
    with pytest.raises(FrontError, match=r"\[0, 1\]"):
        at_eta(RISING, 1.5)


def test_points_of_an_eval_json_skip_broken_points_and_sort_by_eta() -> None:
    doc = {"front": [{"eta": 1.0, "reward": 2.0, "kl": 3.0, "gold": 0.5}, {"eta": 0.0, "reward": 1.0, "kl": 0.0},
                     {"eta": 0.5, "reward": None, "kl": 1.0}, "junk"]}  # fmt: skip
    assert points_of(doc) == [FrontPoint(0.0, 1.0, 0.0), FrontPoint(1.0, 2.0, 3.0, gold=0.5)]


# ------------------------------------------------------------------ a stored run, end to end

REWARD_MODULE = '''
def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


@pytest.fixture
def rewards_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "kwarp_export_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.set_num_threads(1)
    return "kwarp_export_rewards"


def _towards_vowels(base: Path, dest: Path, strength: float = 6.0) -> Path:
    """θ_sft plus a task vector on the final layer norm's bias that raises the logits of vowels."""
    vocab = tiny_tokenizer().get_vocab()
    vowels = [vocab[c] for c in "aeiou"]

    def fn(name: str, t: torch.Tensor) -> torch.Tensor:
        if name != "transformer.ln_f.bias":
            return t
        wte = fn.wte.double()  # type: ignore[attr-defined]
        target = torch.zeros(wte.shape[0], 1, dtype=torch.float64)
        target[vowels] = strength
        delta = torch.linalg.lstsq(wte, target).solution.squeeze(1)  # logits move by wte @ delta
        return (t.double() + delta).to(t.dtype)

    from tests.models import load_state

    fn.wte = load_state(base)["transformer.wte.weight"]  # type: ignore[attr-defined]
    return variant(base, dest, fn)


def _stored_run(
    tmp_path: Path, rewards_module: str, store_url: str | None = None, export: dict[str, Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    """A one-iteration run whose store holds θ_sft, the members, the last SLERP, the recorded document and
    the front `kwarp eval` measured."""
    models = tmp_path / "models"
    base = tiny_gpt2(models / "base")
    slerp = _towards_vowels(base, models / "slerp")
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["hello", "the cat", "once upon a", "why", "so", "abc", "tell me", "a b c"]))  # fmt: skip
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "r"},
        "spec": {
            "policy": {"location": str(base), "dtype": "float32"},
            "reward": {"callable": f"{rewards_module}:vowels"},
            "data": {"train": str(prompts), "eval": str(prompts)},
            "warp": {"iterations": 1, "policies": 2, "steps": 2},
            "training": {"maxNewTokens": 8, "temperature": 1.0, "seed": 4},
            "evaluation": {"etas": [0.0, 0.25, 0.5, 0.75, 1.0], "prompts": 8, "samplesPerPrompt": 8, "batchSize": 8},
            "storage": {"url": store_url or str(tmp_path / "store")},
        },
    }
    if export is not None:
        doc["spec"]["export"] = export
    run = parse(doc)
    store = open_store(run.spec.storage.url, run.spec.storage)
    store.put_checkpoint(base, layout.base("r"))
    store.put_checkpoint(slerp, layout.slerp("r", 0))
    for m in range(2):  # the evaluation measures the members too
        store.put_checkpoint(perturbed(base, models / f"member-{m}", seed=10 + m), layout.member_final("r", 0, m))
    store.put_json(layout.spec_json("r"), doc)
    spec_file = tmp_path / "warprun.json"
    spec_file.write_text(json.dumps(doc))
    assert kwarp_main(["eval", "--iteration", "0", "--spec", str(spec_file), "--device", "cpu"]) == 0
    return spec_file, store.get_json(layout.eval_json("r", 0))


def test_export_at_a_kl_budget_picks_eta_on_the_stored_front_and_measures_within_it(
    tmp_path: Path, rewards_module: str
) -> None:
    spec_file, evaluation = _stored_run(tmp_path, rewards_module)
    front = {p["eta"]: p for p in evaluation["front"]}
    rewards = [front[e]["reward"] for e in sorted(front)]
    kls = [front[e]["kl"] for e in sorted(front)]
    assert kls == sorted(kls) and rewards == sorted(rewards), "the fixture's front must rise in KL and reward"
    budget = (front[0.5]["kl"] + front[0.75]["kl"]) / 2
    out = tmp_path / "policy"

    assert kwarp_main(["export", str(spec_file), "--kl-budget", str(budget), "--out", str(out), "--device", "cpu"]) == 0

    record = json.loads((out / "kwarp-export.json").read_text())
    assert record["between"] == [0.5, 0.75] and 0.5 < record["eta"] < 0.75
    assert record["predicted"]["kl"] == pytest.approx(budget)
    measured = record["measured"]
    assert measured["kl"] <= budget + measured["kl_stderr"] and record["within_budget"] is True
    # More reward than the last evaluated point within the budget, up to the noise of the two estimates.
    assert measured["reward"] > front[0.5]["reward"] - measured["reward_stderr"] - front[0.5]["reward_stderr"]
    # A Hugging Face folder: safetensors, config, tokenizer, the card; the manifest verifies every file.
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "MANIFEST.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    verify(out)
    card = (out / "README.md").read_text()
    assert f"{record['eta']:.4g}" in card and "most reward within KL" in card and "| measured |" in card


def test_export_at_an_evaluated_eta_measures_the_front_point_itself(tmp_path: Path, rewards_module: str) -> None:
    """η = 1 is the stored SLERP bit for bit: measured with the front's prompts and seed, the export's point is the
    front's own point, which shows that the confirmation measures exactly as the front did."""
    spec_file, evaluation = _stored_run(tmp_path, rewards_module)
    out = tmp_path / "at-one"
    # The run given by its location in the store: the document recorded there is used.
    assert kwarp_main(["export", str(tmp_path / "store" / "r"), "--eta", "1", "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "kwarp-export.json").read_text())
    at_one = next(p for p in evaluation["front"] if p["eta"] == 1.0)
    for key in ("reward", "kl", "reward_stderr", "kl_stderr"):
        assert record["measured"][key] == pytest.approx(at_one[key], abs=1e-6), key
    assert record["within_budget"] is None and record["request"] == {"eta": 1.0}


def test_export_refuses_a_budget_below_the_front_and_an_occupied_folder(
    tmp_path: Path, rewards_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file, _ = _stored_run(tmp_path, rewards_module)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert kwarp_main(["export", str(spec_file), "--eta", "0.5", "--out", str(occupied), "--device", "cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (occupied / "keep.txt").exists()
    assert kwarp_main(["export", str(tmp_path / "nowhere"), "--eta", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "neither a WarpRun file nor a run" in capsys.readouterr().err


def test_export_to_s3_publishes_a_checkpoint_with_its_card(
    tmp_path: Path, rewards_module: str, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KWARP_CACHE", str(tmp_path / "cache"))
    bucket = s3.create_bucket()
    spec_file, _ = _stored_run(tmp_path, rewards_module, store_url=f"s3://{bucket}/runs")
    dest = f"s3://{bucket}/policies/r-kl"
    assert kwarp_main(["export", f"s3://{bucket}/runs/r", "--eta", "0.5", "--out", dest, "--device", "cpu"]) == 0
    store = open_store(f"s3://{bucket}/policies")
    assert store.has_checkpoint("r-kl")
    folder = store.open_checkpoint("r-kl")  # downloaded and verified against its manifest
    record = json.loads((folder / "kwarp-export.json").read_text())
    assert record["eta"] == 0.5 and record["location"] == dest and (folder / "README.md").is_file()


def test_the_export_task_follows_spec_export_once_and_the_report_shows_it(
    tmp_path: Path, rewards_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kwarp export` without a run is the plan's task: spec.export, into the run's store by default, export.json
    last (the mark of a done task), nothing redone on a second call; `kwarp report` then shows the point."""
    spec_file, evaluation = _stored_run(tmp_path, rewards_module, export={"klBudget": 0.3})
    store = open_store(str(tmp_path / "store"))
    assert kwarp_main(["export", "--spec", str(spec_file), "--device", "cpu"]) == 0
    record = store.get_json(layout.export_json("r"))
    assert record["location"] == f"{store.url}/r/export" and store.has_checkpoint(layout.export("r"))
    assert record["eta"] == pytest.approx(within_budget(points_of(evaluation), 0.3).eta)
    before = (tmp_path / "store" / "r" / "export.json").stat().st_mtime_ns
    assert kwarp_main(["export", "--spec", str(spec_file), "--device", "cpu"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "store" / "r" / "export.json").stat().st_mtime_ns == before
    # Tool flags belong with a run; the task takes its choice from the spec.
    assert kwarp_main(["export", "--spec", str(spec_file), "--eta", "0.3"]) == 2
    assert "need a run" in capsys.readouterr().err

    assert kwarp_main(["report", str(spec_file)]) == 0
    report = tmp_path / "store" / "r" / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["export"]["eta"] == record["eta"] and summary["export"]["measured"] == record["measured"]
    page = (report / "report.html").read_text()
    assert "Exported policy" in page and record["location"] in page
