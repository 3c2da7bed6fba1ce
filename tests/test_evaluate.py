"""The shared policy helpers (kwarp.policy) and the evaluation (kwarp.run.evaluate) on tiny random models."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from kwarp.cli import main as kwarp_main
from kwarp.core.checkpoints import CheckpointError
from kwarp.core.errors import UserError
from kwarp.core.spec import RewardSpec, parse
from kwarp.core.weights import save_pretrained
from kwarp.policy import (
    completion_mask,
    copy_weights_,
    load_causal_lm,
    load_reward,
    load_tokenizer,
    read_prompts,
    sample,
    sequence_logprobs,
)
from kwarp.run.evaluate import evaluate_iteration, evaluate_policy, interpolate_
from kwarp.store import layout, open_store
from tests.models import load_state, perturbed, tiny_gpt2, tiny_llama, tiny_tokenizer, variant

REWARD_MODULE = '''
def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

def wrong_length(prompts, completions):
    return [0.0]
'''


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def rewards_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "kwarp_eval_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "kwarp_eval_rewards"


def _jsonl(path: Path, prompts: list[str], field: str = "prompt") -> Path:
    path.write_text("".join(json.dumps({field: p}) + "\n" for p in prompts))
    return path


# ------------------------------------------------------------------------------------- prompts


def test_read_prompts_reads_the_field_and_honours_limit(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", ["one", "two", "three"], field="text")
    assert read_prompts(path, "text") == ["one", "two", "three"]
    assert read_prompts(str(path), "text", limit=2) == ["one", "two"]
    assert read_prompts(f"file://{path}", "text") == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": \n', r"line 2 is not valid JSON"),
        ('{"prompt": "ok"}\n\n{"text": "x"}\n', r"line 3 has no non-empty string field 'prompt'"),
        ('{"prompt": "   "}\n', r"line 1 has no non-empty string field"),
        ("\n\n", r"holds no prompts"),
    ],
)
def test_read_prompts_names_file_and_line_of_a_bad_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        read_prompts(path, "prompt")
    assert str(path) in str(err.value)


def test_read_prompts_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(str(tmp_path / "absent.jsonl"), "prompt", spec_field="spec.data.train")


# --------------------------------------------------------------------------------- model loading


def test_loading_refuses_pickle_only_folders(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="never loads pickled weights"):
        load_causal_lm(folder, "float32")


def test_tokenizer_pads_left_and_gets_a_pad_token(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(folder)  # a tokenizer without a pad token, as many base models ship
    loaded = load_tokenizer(folder)
    assert loaded.padding_side == "left" and loaded.truncation_side == "left"
    assert loaded.pad_token == loaded.eos_token


def test_copy_weights_overwrites_every_parameter_including_tied_ones(tmp_path: Path) -> None:
    base = tiny_gpt2(tmp_path / "base")
    other = perturbed(base, tmp_path / "other", seed=3, scale=0.5)
    model = load_causal_lm(base, "float32")
    copy_weights_(model, other)
    expected = load_state(other)
    for name, p in model.named_parameters():
        assert torch.equal(p, expected[name]), name
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


# ------------------------------------------------------------------------------------- sampling


def test_completion_mask_stops_after_the_first_eos() -> None:
    ids = torch.tensor([[5, 6, 3, 7, 3], [3, 5, 5, 5, 5], [5, 5, 5, 5, 5], [5, 9, 6, 9, 1]])
    mask = completion_mask(ids, eos=[3, 9])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_sampling_is_plain_softmax_at_temperature_whatever_generation_config_says(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    hostile = {"do_sample": False, "top_k": 2, "top_p": 0.3, "repetition_penalty": 3.0, "eos_token_id": 3}
    (folder / "generation_config.json").write_text(json.dumps(hostile))
    model = load_causal_lm(folder, "float32")
    tok = load_tokenizer(folder)
    assert model.generation_config.top_k == 2  # the checkpoint's settings are on the model...
    torch.manual_seed(0)
    n, temperature = 8000, 0.7
    drawn = sample(model, tok, ["ab"], samples_per_prompt=n, max_new_tokens=1, temperature=temperature)
    assert model.generation_config.top_k == 2  # ...and are restored afterwards
    with torch.no_grad():
        logits = model(**tok(["ab"], return_tensors="pt")).logits[0, -1].float()
    expected = torch.softmax(logits / temperature, dim=-1)
    empirical = torch.bincount(drawn.completion_ids[:, 0], minlength=expected.numel()).float() / n
    # Top-k 2 would give a total variation near 0.98 here; sampling noise alone about 0.05.
    total_variation = 0.5 * (empirical - expected).abs().sum()
    assert total_variation < 0.1


def test_samples_are_prompt_major_and_reproducible_under_a_seed(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    torch.manual_seed(1)
    a = sample(model, tok, ["hello there", "x"], samples_per_prompt=3, max_new_tokens=5, temperature=1.0)
    torch.manual_seed(1)
    b = sample(model, tok, ["hello there", "x"], samples_per_prompt=3, max_new_tokens=5, temperature=1.0)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert a.prompt_ids.shape[0] == 6
    assert torch.equal(a.prompt_ids[0], a.prompt_ids[2]) and not torch.equal(a.prompt_ids[2], a.prompt_ids[3])
    assert a.prompt_mask[3:, 0].eq(0).all()  # the short prompt is left-padded


# ------------------------------------------------------------------------------------ log-probs


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_sequence_logprobs_match_per_sequence_computation_with_left_padding(tmp_path: Path, builder) -> None:
    folder = builder(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    torch.manual_seed(2)
    drawn = sample(model, tok, ["a longer prompt here", "hi"], samples_per_prompt=2, max_new_tokens=6, temperature=1.0)
    # Cut one completion short with an EOS so the mask matters.
    ids = drawn.completion_ids.clone()
    ids[1, 2] = tok.eos_token_id
    cmask = completion_mask(ids, [tok.eos_token_id])
    input_ids = torch.cat([drawn.prompt_ids, ids], dim=1)
    attention = torch.cat([drawn.prompt_mask, torch.ones_like(ids)], dim=1)
    temperature = 0.8
    with torch.no_grad():
        got = sequence_logprobs(model, input_ids, attention, cmask, temperature=temperature, with_entropy=True)
    assert drawn.prompt_mask[2:].eq(0).any()  # padding present
    for row in range(input_ids.shape[0]):
        prompt = drawn.prompt_ids[row][drawn.prompt_mask[row].bool()]
        completion = ids[row][cmask[row].bool()]
        seq = torch.cat([prompt, completion])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seq).logits[0].float() / temperature, dim=-1)
        steps = range(len(prompt) - 1, seq.shape[1] - 1)
        expected = sum(float(logp[t, seq[0, t + 1]]) for t in steps)
        entropy = sum(float(-(logp[t].exp() * logp[t]).sum()) for t in steps) / len(steps)
        assert float(got.logprob[row]) == pytest.approx(expected, abs=1e-4)
        assert float(got.entropy[row]) == pytest.approx(entropy, abs=1e-4)
        assert int(got.tokens[row]) == len(completion)
    assert int(got.tokens[1]) == 3  # up to and including the EOS


def test_sequence_logprobs_carry_gradients(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    torch.manual_seed(0)
    s = sample(model, tok, ["ab"], samples_per_prompt=2, max_new_tokens=4, temperature=1.0)
    out = sequence_logprobs(model, s.input_ids, s.attention_mask, s.completion_mask)
    out.logprob.sum().backward()
    assert model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert (out.logprob < 0).all()


# --------------------------------------------------------------------------------------- reward


def test_callable_reward_scores_and_checks_its_output(rewards_module: str) -> None:
    reward = load_reward(RewardSpec(callable=f"{rewards_module}:vowels"))
    got = reward.score(["p", "p"], ["aaxx", ""])
    assert got.dtype == torch.float32 and got.tolist() == [0.5, 0.0]
    with pytest.raises(UserError, match="returned 1 values for 2"):
        load_reward(RewardSpec(callable=f"{rewards_module}:wrong_length")).score(["p", "p"], ["a", "b"])
    with pytest.raises(UserError, match="no attribute 'absent'"):
        load_reward(RewardSpec(callable=f"{rewards_module}:absent"))


def test_classifier_reward_reads_the_chosen_logit_of_prompt_plus_completion(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=128, num_labels=2,
                        bos_token_id=2, eos_token_id=3, pad_token_id=1)
    folder = tmp_path / "rm"
    save_pretrained(GPT2ForSequenceClassification(config).eval(), folder, tokenizer=tiny_tokenizer())
    reward = load_reward(RewardSpec(location=str(folder), output_index=1))
    prompts, completions = ["good ", "a much longer prompt "], ["day", "x"]
    got = reward.score(prompts, completions)
    tok = load_tokenizer(folder)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        with torch.no_grad():
            alone = reward.model(**tok([p + c], return_tensors="pt")).logits[0, 1]  # type: ignore[attr-defined]
        assert float(got[i]) == pytest.approx(float(alone), abs=1e-5)
    with pytest.raises(UserError, match="outputIndex is 2"):
        load_reward(RewardSpec(location=str(folder), output_index=2))


# ---------------------------------------------------------------------------------- evaluation


def test_kl_is_exactly_zero_for_identical_policies(tmp_path: Path, rewards_module: str) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    reward = load_reward(RewardSpec(callable=f"{rewards_module}:vowels"))
    prompts = ["one", "two", "three", "four", "five"]
    point = evaluate_policy(model, tok, copy.deepcopy(model), reward, prompts, samples=2, max_new_tokens=6,
                            temperature=0.9, seed=3, batch_size=2)
    assert point["kl"] == 0.0 and point["kl_stderr"] == 0.0
    assert 0.0 <= point["reward"] <= 1.0 and point["length"] > 0
    # The RNG is forked: evaluating twice with the same seed gives the same numbers.
    torch.manual_seed(123)
    before = torch.rand(1)
    again = evaluate_policy(model, tok, model, reward, prompts, samples=2, max_new_tokens=6, temperature=0.9,
                            seed=3, batch_size=2)
    torch.manual_seed(123)
    assert again == point and torch.equal(torch.rand(1), before)


def test_interpolation_hits_both_ends_exactly(tmp_path: Path) -> None:
    a = load_causal_lm(tiny_gpt2(tmp_path / "a", seed=0), "float32")
    b = load_causal_lm(tiny_gpt2(tmp_path / "b", seed=1), "float32")
    work = copy.deepcopy(a)
    start = {n: p.detach().clone() for n, p in a.named_parameters()}
    end = {n: p.detach().clone() for n, p in b.named_parameters()}
    interpolate_(work, start, end, 1.0)
    assert all(torch.equal(p, end[n]) for n, p in work.named_parameters())
    interpolate_(work, start, end, 0.0)
    assert all(torch.equal(p, start[n]) for n, p in work.named_parameters())
    interpolate_(work, start, end, 0.25)
    w = dict(work.named_parameters())["transformer.h.0.mlp.c_fc.weight"]
    name = "transformer.h.0.mlp.c_fc.weight"
    torch.testing.assert_close(w, 0.75 * start[name] + 0.25 * end[name])


def _eval_store(tmp_path: Path, rewards_module: str) -> tuple[Path, object]:
    root = tmp_path / "store"
    base = tiny_gpt2(root / "r" / "base")
    perturbed(base, root / "r" / "iter-0" / "slerp", seed=1, scale=1.0)
    for m in range(2):
        perturbed(base, root / "r" / "iter-0" / f"member-{m}" / "final", seed=10 + m, scale=1.0)
    perturbed(base, root / "r" / "iter-1" / "init", seed=5, scale=0.3)
    prompts = _jsonl(tmp_path / "eval.jsonl", ["hello", "the cat", "once upon a", "why", "so", "abc"])
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "r"},
        "spec": {
            "policy": {"location": str(base), "dtype": "float32"},
            "reward": {"callable": f"{rewards_module}:vowels"},
            "data": {"train": str(prompts), "eval": str(prompts)},
            "warp": {"iterations": 2, "policies": 2, "steps": 2},
            "training": {"maxNewTokens": 6, "temperature": 0.9, "seed": 4},
            "evaluation": {"etas": [1.0, 0.0, 0.5], "prompts": 4, "samplesPerPrompt": 2, "batchSize": 3},
            "storage": {"url": str(root)},
        },
    }
    spec_file = tmp_path / "warprun.json"
    spec_file.write_text(json.dumps(doc))
    return spec_file, parse(doc)


def test_eval_task_writes_the_front_members_and_inits(tmp_path: Path, rewards_module: str) -> None:
    spec_file, run = _eval_store(tmp_path, rewards_module)
    assert kwarp_main(["eval", "--iteration", "0", "--spec", str(spec_file), "--device", "cpu"]) == 0
    store = open_store(str(tmp_path / "store"))
    result = store.get_json(layout.eval_json("r", 0))
    point_fields = {"reward", "reward_stderr", "kl", "kl_stderr", "length", "per_prompt"}
    assert result["iteration"] == 0 and result["reference"] == "sft"
    assert result["etas"] == [0.0, 0.5, 1.0] and [p["eta"] for p in result["front"]] == [0.0, 0.5, 1.0]
    assert all(set(p) == point_fields | {"eta"} for p in result["front"])
    assert [m["member"] for m in result["members"]] == [0, 1]
    assert all(set(m) == point_fields | {"member"} for m in result["members"])
    assert result["prompts"] == 4 and result["samples"] == 2
    at_sft, _, at_slerp = result["front"]
    assert at_sft["kl"] == 0.0 and at_sft["kl_stderr"] == 0.0  # η = 0 is θ_sft itself
    assert at_slerp["kl"] > 0.0
    assert result["init"] == {k: at_sft[k] for k in point_fields}  # iteration 0 starts at θ_sft
    assert set(result["next_init"]) == point_fields and result["next_init"]["kl"] > 0.0
    # Idempotent: a second run finds eval.json and leaves it alone.
    before = (tmp_path / "store" / "r" / "iter-0" / "eval.json").stat().st_mtime_ns
    assert evaluate_iteration(run, 0, device="cpu") is None
    assert (tmp_path / "store" / "r" / "iter-0" / "eval.json").stat().st_mtime_ns == before


def test_eval_tool_mode_prints_one_point(tmp_path: Path, rewards_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    prompts = _jsonl(tmp_path / "p.jsonl", ["one", "two", "three"])
    argv = ["eval", "--model", str(folder), "--sft", str(folder), "--reward", f"{rewards_module}:vowels",
            "--prompts", str(prompts), "--max-new-tokens", "5", "--device", "cpu", "--dtype", "float32"]
    assert kwarp_main(argv) == 0
    point = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert point["kl"] == 0.0
    assert set(point) == {"model", "reward", "reward_stderr", "kl", "kl_stderr", "length", "per_prompt"}
    assert kwarp_main(["eval", "--model", str(folder)]) == 2  # tool mode needs --sft, --reward, --prompts


def test_eval_tool_mode_walks_each_models_liti_path_with_a_gold_reward(
    tmp_path: Path, rewards_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_gpt2(tmp_path / "base")
    members = [perturbed(base, tmp_path / f"m{m}", seed=m, scale=1.0) for m in range(2)]
    prompts = _jsonl(tmp_path / "p.jsonl", ["one", "two", "three"])
    argv = ["eval", "--model", str(members[0]), "--model", str(members[1]), "--etas", "0.5,0,1", "--sft", str(base),
            "--reward", f"{rewards_module}:vowels", "--gold", f"{rewards_module}:vowels", "--prompts", str(prompts),
            "--samples", "2", "--max-new-tokens", "5", "--device", "cpu", "--dtype", "float32"]
    assert kwarp_main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines() if x.startswith("{")]
    assert [x["model"] for x in lines] == [str(m) for m in members]
    for x in lines:
        assert [p["eta"] for p in x["front"]] == [0.0, 0.5, 1.0]
        assert x["front"][0]["kl"] == 0.0 and x["front"][2]["kl"] != 0.0
        for p in x["front"]:  # the gold reward is scored on the very same completions
            assert p["gold"] == p["reward"] and p["per_prompt"]["gold"] == p["per_prompt"]["reward"]
    # η = 0 is θ_sft for both models: the same samples, the same values
    assert lines[0]["front"][0]["per_prompt"] == lines[1]["front"][0]["per_prompt"]
    with pytest.raises(SystemExit):
        kwarp_main([*argv[:5], "--etas", "0.5,2", *argv[7:]])  # η outside [0, 1]


def test_eval_task_reports_gold_and_per_prompt_values_at_every_point(tmp_path: Path, rewards_module: str) -> None:
    spec_file, _ = _eval_store(tmp_path, rewards_module)
    doc = json.loads(spec_file.read_text())
    doc["spec"]["evaluation"]["goldReward"] = {"callable": f"{rewards_module}:vowels"}
    spec_file.write_text(json.dumps(doc))
    assert kwarp_main(["eval", "--iteration", "0", "--spec", str(spec_file), "--device", "cpu"]) == 0
    result = open_store(str(tmp_path / "store")).get_json(layout.eval_json("r", 0))
    points = [*result["front"], *result["members"], result["init"], result["next_init"]]
    for p in points:
        per = p["per_prompt"]
        assert len(per["reward"]) == len(per["kl"]) == len(per["gold"]) == result["prompts"] == 4
        # Each prompt's value is the mean of its samples: their mean is the point's mean.
        assert sum(per["reward"]) / 4 == pytest.approx(p["reward"], abs=1e-4)
        assert sum(per["kl"]) / 4 == pytest.approx(p["kl"], abs=1e-4)
        assert p["gold"] == p["reward"] and p["gold_stderr"] == p["reward_stderr"]  # same callable, same completions


def test_front_at_bf16_compute_keeps_the_float32_step_from_sft(tmp_path: Path, rewards_module: str) -> None:
    """θ_η is held in float32 and run under autocast: a step from θ_sft smaller than bf16's resolution
    still changes the policy (rounded to bf16 weights, θ_η would be θ_sft and its KL exactly 0)."""
    spec_file, _ = _eval_store(tmp_path, rewards_module)
    root = tmp_path / "store" / "r"
    # θ_sft exactly representable in bf16; the SLERP θ_sft + 2^-12·|θ|, far below half a bf16 step (2^-9).
    rounded = variant(tiny_gpt2(tmp_path / "raw"), tmp_path / "rounded", lambda n, t: t.bfloat16().float())
    for key in ("base", "iter-0/slerp"):
        shutil.rmtree(root / key)
    variant(rounded, root / "base", lambda n, t: t)
    variant(rounded, root / "iter-0" / "slerp", lambda n, t: t + t.abs() * 2.0**-12)
    doc = json.loads(spec_file.read_text())
    doc["spec"]["policy"]["dtype"] = "bfloat16"
    doc["spec"]["policy"]["location"] = str(root / "base")
    doc["spec"]["evaluation"]["etas"] = [0.0, 1.0]
    spec_file.write_text(json.dumps(doc))
    assert kwarp_main(["eval", "--iteration", "0", "--spec", str(spec_file), "--device", "cpu"]) == 0
    at_sft, at_slerp = open_store(str(tmp_path / "store")).get_json(layout.eval_json("r", 0))["front"]
    assert at_sft["kl"] == 0.0
    assert at_slerp["kl"] != 0.0 and any(k != 0.0 for k in at_slerp["per_prompt"]["kl"])
