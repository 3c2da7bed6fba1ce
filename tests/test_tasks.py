"""The bundled demo task: the gold rule, the corpus, and a tiny build checked end to end.

One small build (a fraction of the real one's sizes) is made per module in a temporary folder;
the real build's figures are measured by `kwarp task build` itself (build.json).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from kwarp.core.checkpoints import verify
from kwarp.core.errors import UserError
from kwarp.core.spec import load
from kwarp.tasks import sentiment
from kwarp.tasks.builder import SIZES, BuildConfig, build, demo_document, fingerprint, is_built, task_dir
from kwarp.tasks.corpus import CorpusSizes, make_corpus
from kwarp.tasks.grammar import ReviewGrammar

# The builder's own tiny size, with half the evaluation prompts.
TINY = dataclasses.replace(SIZES["tiny"], sizes=dataclasses.replace(SIZES["tiny"].sizes, eval_prompts=12))
TINY_SIZES = TINY.sizes
SEED = 7
POSITIVE = "The battery of this phone is excellent, and I love it."
NEGATIVE = "The battery of this phone is terrible, and I hate it."


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    return build(seed=SEED, out=tmp_path_factory.mktemp("task") / "sentiment", progress=True, config=TINY)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the gold rule (no build needed)


def _gold(text: str) -> float:
    return sentiment.score_text(text)


def test_gold_prefers_positive_and_grades_words() -> None:
    assert _gold(POSITIVE) > 0.5 > -0.5 > _gold(NEGATIVE)
    assert _gold("This film was excellent.") > _gold("This film was good.") > _gold("This film was okay.")
    assert _gold("This film was okay.") > _gold("This film was bad.") > _gold("This film was awful.")


def test_gold_negation_flips_and_damps() -> None:
    bad, not_bad = _gold("The plot was bad."), _gold("The plot was not bad.")
    good, not_good = _gold("The plot was good."), _gold("The plot wasn't good.")
    assert bad < 0 < not_bad < good
    assert not_good < 0 and abs(not_good) < good
    assert _gold("I did not like it.") < 0 < _gold("I liked it.")


def test_gold_intensifiers_and_contrast() -> None:
    assert _gold("The lens is very good.") > _gold("The lens is good.") > _gold("The lens is slightly good.")
    # What follows "but" weighs more than what precedes it.
    assert _gold("The screen is great but the battery is awful.") < 0
    assert _gold("The screen is awful but the battery is great.") > 0


def test_gold_penalises_degenerate_text() -> None:
    clean = _gold("The battery of this phone is excellent.")
    assert _gold("The battery of this phone is excellent excellent excellent excellent.") < clean - 1.0
    assert _gold("The battery of this phone is excellent amazing perfect brilliant.") < clean - 1.0
    assert _gold("The battery of this phone is excellent") == pytest.approx(
        clean - sentiment.UNFINISHED_PENALTY
    )
    assert min(_gold("good " * 40), _gold("is is is is is is.")) >= -1.0 - sentiment.PENALTY_CAP


def test_true_score_joins_prompt_and_completion() -> None:
    prompts = ["I bought this kettle last week and", "This film"]
    scores = sentiment.true_score(prompts, [" I love it.", "."])
    assert scores[0] == pytest.approx(_gold("I bought this kettle last week and I love it."))
    # An empty completion is too short.
    assert scores[1] == pytest.approx(-sentiment.SHORT_PENALTY)
    # A completion decoded without its leading space scores as the spaced text.
    assert sentiment.true_score(prompts[:1], ["I love it."]) == scores[:1]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        sentiment.true_score(prompts, ["x."])


# ---------------------------------------------------------------- the corpus


def test_corpus_is_deterministic_per_seed() -> None:
    sizes = CorpusSizes(sft_texts=50, rm_train_pairs=30, rm_eval_pairs=10, train_prompts=40, eval_prompts=10)
    a, b, c = make_corpus(3, sizes), make_corpus(3, sizes), make_corpus(4, sizes)
    assert a == b
    assert a.sft_texts != c.sft_texts and a.train_prompts != c.train_prompts


def test_corpus_sentiment_is_mixed_and_pairs_follow_gold() -> None:
    corpus = make_corpus(
        0,
        CorpusSizes(sft_texts=2000, rm_train_pairs=2000, rm_eval_pairs=10, train_prompts=10, eval_prompts=10),
    )
    judged = [sentiment.judge(t) for t in corpus.sft_texts]
    scores = sorted(j.score for j in judged)
    median = scores[len(scores) // 2]
    assert -0.3 < median < 0.3, "SFT texts should be near neutral so RL has room"
    assert scores[int(0.9 * len(scores))] < 0.9, "most SFT texts are not already maximally positive"
    # The grammar never writes degenerate text: repetition and glued sentiment words are absent.
    assert all(j.repetition == 0 and j.salad == 0 for j in judged)
    agree = sum(p.gold_chosen > p.gold_rejected for p in corpus.rm_train) / len(corpus.rm_train)
    assert 0.8 < agree < 1.0, "labels follow the gold rule, with Bradley-Terry noise"


def test_prompt_sets_are_distinct_and_disjoint() -> None:
    grammar = ReviewGrammar()
    assert sum(1 for _ in grammar.all_openings()) > 2200
    corpus = make_corpus(
        0, CorpusSizes(sft_texts=1, rm_train_pairs=1, rm_eval_pairs=1, train_prompts=2000, eval_prompts=200)
    )
    assert len(set(corpus.train_prompts)) == 2000 and len(set(corpus.eval_prompts)) == 200
    assert not set(corpus.train_prompts) & set(corpus.eval_prompts)


# ---------------------------------------------------------------- a tiny build


def test_tokenizer_loads_with_autotokenizer(task: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task / "policy")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
    )
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert len(tok) <= TINY.vocab_size and tok.padding_side == "left"
    ids = tok(POSITIVE)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == POSITIVE
    assert AutoTokenizer.from_pretrained(task / "reward").padding_side == "right"


def test_policy_loads_and_samples_untruncated(task: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task / "policy")
    policy = AutoModelForCausalLM.from_pretrained(task / "policy", use_safetensors=True)
    gen = policy.generation_config
    assert gen.do_sample and gen.top_k == 0 and gen.top_p == 1.0
    assert (gen.eos_token_id, gen.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    batch = tok(
        ["The screen of this laptop", "I watched this film last night and"], return_tensors="pt", padding=True
    )
    torch.manual_seed(0)
    out = policy.generate(
        **batch,
        max_new_tokens=TINY.max_new_tokens,
        temperature=0.9,
        output_scores=True,
        return_dict_in_generate=True,
    )
    # No top-k / top-p filter: every token keeps a finite score, so samples follow the full distribution.
    assert all(torch.isfinite(step).all() for step in out.scores)
    completions = out.sequences[:, batch["input_ids"].shape[1] :]
    assert completions.shape[1] > 0
    assert all(text.strip() for text in tok.batch_decode(completions, skip_special_tokens=True))


def test_reward_model_ranks_positive_above_negative(task: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task / "reward")
    rm = AutoModelForSequenceClassification.from_pretrained(task / "reward", use_safetensors=True).eval()
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    texts = [POSITIVE, NEGATIVE, "This comedy was wonderful.", "This comedy was dreadful."]
    with torch.no_grad():
        r = rm(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0]
    assert r[0] > r[1] and r[2] > r[3]
    figures = json.loads((task / "build.json").read_text())
    assert figures["reward_model"]["heldout_accuracy"] > 0.6
    assert figures["parameters"]["reward"] == sum(p.numel() for p in rm.parameters())


def test_prompt_files_and_data(task: Path) -> None:
    train, evals = _jsonl(task / "data" / "train.jsonl"), _jsonl(task / "data" / "eval.jsonl")
    assert len(train) == TINY_SIZES.train_prompts and len(evals) == TINY_SIZES.eval_prompts
    assert all(set(row) == {"prompt"} and row["prompt"].strip() for row in train + evals)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    # The files hold what the seeded generator makes.
    assert [r["prompt"] for r in train] == make_corpus(SEED, TINY_SIZES).train_prompts
    pairs = _jsonl(task / "data" / "preferences.jsonl")
    assert len(pairs) == TINY_SIZES.rm_train_pairs and {"prompt", "chosen", "rejected"} <= set(pairs[0])


def test_warprun_document_validates(task: Path) -> None:
    run = load(task / "warprun.yaml")
    spec = run.spec
    assert Path(spec.policy.location) == task / "policy" and Path(spec.reward.location) == task / "reward"
    assert Path(spec.data.train) == task / "data" / "train.jsonl" and Path(spec.data.eval).is_file()
    assert Path(spec.storage.url) == task / "runs"
    assert spec.resources.trainer.gpus == 0 and spec.resources.evaluation.gpus == 0
    assert spec.training.max_new_tokens == TINY.max_new_tokens and spec.warp.policies == 2
    assert spec.training.samples_per_prompt >= 2 and spec.training.baseline == "leave-one-out"
    from kwarp.core.spec import parse

    doc = parse(demo_document(store_url="s3://bucket/runs", folder=task))
    assert doc.spec.storage.url == "s3://bucket/runs" and doc.spec.policy.location == str(task / "policy")


def test_manifests_verify_and_second_build_is_cached(task: Path) -> None:
    for folder in (task, task / "policy", task / "reward"):
        verify(folder)
    assert is_built(task, SEED, TINY)
    assert not is_built(task, SEED + 1, TINY), "another seed is another task"
    before = (task / "MANIFEST.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert build(seed=SEED, out=task, progress=False, config=TINY) == task
    assert time.perf_counter() - start < 5.0
    assert (task / "MANIFEST.json").stat().st_mtime_ns == before


def test_incomplete_task_is_not_built(task: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(task, copy)
    assert is_built(copy, SEED, TINY)
    (copy / "policy" / "model.safetensors").write_bytes(b"")
    assert not is_built(copy, SEED, TINY)


def test_build_refuses_a_folder_that_is_not_a_task(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a kwarp demo task"):
        build(out=tmp_path, progress=False, config=TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_task_dir_follows_cache_seed_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWARP_CACHE", str(tmp_path))
    default = task_dir()
    assert default.parent == tmp_path / "tasks" and default.name.startswith("sentiment-v1-")
    assert task_dir(seed=1) != default and task_dir(config=TINY) != default
    assert fingerprint(0) == fingerprint(0) != fingerprint(0, TINY)
    assert not is_built()
    with pytest.raises(UserError, match="kwarp task build"):
        demo_document()


def test_cli_path_and_show(
    task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kwarp.cli import main

    monkeypatch.setenv("KWARP_CACHE", str(tmp_path))
    assert main(["task", "path"]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == str(task_dir()) and "kwarp task build" in err
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["task", "show", "--out", str(task), "--samples", "2"]) == 0
    out, _ = capsys.readouterr()
    prompts = [r["prompt"] for r in _jsonl(task / "data" / "eval.jsonl")[:2]]
    assert all(p in out for p in prompts) and "gold" in out


def test_rebuild_keeps_runs(task: Path) -> None:
    marker = task / "runs" / "sentiment-demo" / "kept.txt"
    marker.parent.mkdir(parents=True)
    marker.write_text("a run's file")
    before = json.loads((task / "MANIFEST.json").read_text())
    build(seed=SEED, out=task, force=True, progress=False, config=TINY)
    assert marker.read_text() == "a run's file"
    assert json.loads((task / "MANIFEST.json").read_text()) != before
    assert is_built(task, SEED, TINY)
    assert not list(task.parent.glob(".*")), "no staging or set-aside folder is left behind"


def test_task_sizes() -> None:
    """medium: a 20-60M-parameter policy trained on a GPU, longer reviews; tiny: the smoke-test size."""
    from transformers import GPT2Config

    from kwarp.tasks.builder import SIZES, config_for

    medium = SIZES["medium"]
    m = medium.model
    config = GPT2Config(vocab_size=medium.vocab_size, n_positions=m.n_positions, n_embd=m.n_embd, n_layer=m.n_layer,
                        n_head=m.n_head, tie_word_embeddings=True)
    # GPT-2 parameters: embeddings (tied head) + 12·d² + 13·d per block + final norm.
    d = config.n_embd
    params = config.vocab_size * d + config.n_positions * d + config.n_layer * (12 * d * d + 13 * d) + 2 * d
    assert 20e6 <= params <= 60e6 and medium.device == "cuda"
    assert SIZES["small"] == BuildConfig() and SIZES["tiny"].model.n_layer == 1
    assert task_dir(config=medium, size="medium").name.startswith("sentiment-medium-v1-")
    with pytest.raises(UserError, match="unknown task size 'huge'"):
        config_for("huge")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="GPU"):
            build(size="medium")


def test_longer_reviews_with_extra_clauses() -> None:
    import random

    short, long = ReviewGrammar(), ReviewGrammar(extra_clauses=2)
    n_short = sum(short.review(random.Random(i), 0.0, 1.0).text.count(",") for i in range(300))
    n_long = sum(long.review(random.Random(i), 0.0, 1.0).text.count(",") for i in range(300))
    assert n_long > n_short * 1.2


def test_build_progress_prints_timed_lines_when_not_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """`kwarp task build` into a log (make demo | tee, CI) printed nothing for minutes."""
    import io

    from rich.console import Console

    from kwarp.tasks.progress import BuildProgress

    with BuildProgress(True, console=Console(file=io.StringIO(), force_terminal=False)) as bar:
        assert bar.lines
        with bar.stage("sft", total=100) as on_step:
            for step in range(100):
                on_step(step, 1.0 / (step + 1))
        with bar.stage("save"):
            pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("Training the SFT policy (100 steps)")
    assert sum(" sft " in line and "/100 loss " in line for line in lines) == 9  # every tenth, not the last
    assert any("sft done in" in line for line in lines) and any("save done in" in line for line in lines)
    assert all(line.startswith("[task build") for line in lines)
