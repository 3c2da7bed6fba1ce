"""kwarp's decode loops draw from exactly the distribution transformers' generate draws from.

The frequency test: a tiny random GPT-2 with peaked logits (initializer_range 1.0, so temperature
matters), thousands of completions of three tokens from each path, and a chi-square test of
homogeneity on the counts of each position's token and of the (first, second) pairs. Tolerance: a
path fails when p < 1e-3. Its power is checked in the same test: sampling at temperature 1.0
instead of 0.9 is rejected.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from kwarp.policy import generation, lean_decode, load_causal_lm, load_tokenizer, sample, sequence_logprobs
from kwarp.run.evaluate import evaluate_policy
from tests.models import tiny_gpt2, tiny_llama

TEMPERATURE = 0.9
P_FLOOR = 1e-3
PROMPTS = ["ab", "hello there"]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def chi_square_p(a: torch.Tensor, b: torch.Tensor, min_expected: float = 5.0) -> float:
    """p-value of the chi-square test that two count vectors come from one distribution.

    Categories expected fewer than `min_expected` times are pooled into one, as the test requires.
    """
    a, b = a.double(), b.double()
    total = a + b
    na, nb = a.sum(), b.sum()
    small = (total * torch.minimum(na, nb) / (na + nb)) < min_expected
    if small.any():
        a = torch.cat([a[~small], a[small].sum()[None]])
        b = torch.cat([b[~small], b[small].sum()[None]])
        total = a + b
    keep = total > 0
    a, b, total = a[keep], b[keep], total[keep]
    ea, eb = total * na / (na + nb), total * nb / (na + nb)
    stat = ((a - ea) ** 2 / ea).sum() + ((b - eb) ** 2 / eb).sum()
    df = max(int(keep.sum()) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2.0))


def _counts(ids: torch.Tensor, vocab: int) -> list[torch.Tensor]:
    """Counts of the token at each position, and of the (first, second) pair."""
    per_position = [torch.bincount(ids[:, t], minlength=vocab) for t in range(ids.shape[1])]
    pairs = torch.bincount(ids[:, 0] * vocab + ids[:, 1], minlength=vocab * vocab)
    return [*per_position, pairs]


def _draw(model, tok, generation_path: str, seed: int, n: int, temperature: float = TEMPERATURE) -> torch.Tensor:
    torch.manual_seed(seed)
    drawn = sample(
        model, tok, PROMPTS, samples_per_prompt=n, max_new_tokens=3, temperature=temperature,
        generation=generation_path,
    )
    return drawn.completion_ids


def _min_p(ours: torch.Tensor, plain: torch.Tensor, vocab: int) -> float:
    ps = []
    for row in range(len(PROMPTS)):  # each prompt's completions separately: rows are prompt-major
        a = ours.reshape(len(PROMPTS), -1, ours.shape[1])[row]
        b = plain.reshape(len(PROMPTS), -1, plain.shape[1])[row]
        ps += [chi_square_p(x, y) for x, y in zip(_counts(a, vocab), _counts(b, vocab), strict=True)]
    return min(ps)


@pytest.fixture(scope="module")
def peaked(tmp_path_factory: pytest.TempPathFactory):
    folder = tiny_gpt2(tmp_path_factory.mktemp("peaked") / "m", initializer_range=1.0)
    model = load_causal_lm(folder, "float32")
    return model, load_tokenizer(folder)


def test_the_decode_loop_samples_the_distribution_generate_samples(peaked) -> None:
    model, tok = peaked
    vocab = model.config.vocab_size
    n = 3000
    assert lean_decode.supports(model)  # auto on a CPU: its decode steps take the lean forward
    plain = _draw(model, tok, "plain", seed=1, n=n)
    eager = _draw(model, tok, "auto", seed=2, n=n)  # auto on a CPU: the uncompiled decode loop
    assert eager.shape == plain.shape == (len(PROMPTS) * n, 3)
    assert _min_p(eager, plain, vocab) > P_FLOOR
    # The test has power: the same loop at temperature 1.0 instead of 0.9 is told apart.
    hotter = _draw(model, tok, "auto", seed=3, n=n, temperature=1.0)
    assert _min_p(hotter, plain, vocab) < P_FLOOR


def test_the_compiled_loop_samples_the_same_distribution_and_does_not_recompile(peaked) -> None:
    model, tok = peaked
    vocab = model.config.vocab_size
    n = 1500
    plain = _draw(model, tok, "plain", seed=4, n=n)
    compiled = _draw(model, tok, "compiled", seed=5, n=n)
    assert compiled.shape == plain.shape
    assert _min_p(compiled, plain, vocab) > P_FLOOR
    # Another step with other prompts of lengths in the same bucket reuses the compiled graph.
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.manual_seed(6)
        again = sample(model, tok, ["xyz", "a"], samples_per_prompt=n, max_new_tokens=3, temperature=TEMPERATURE,
                       generation="compiled")
    assert again.completion_ids.shape == (2 * n, 3)


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_the_sampler_log_probs_and_entropy_are_those_of_the_update(tmp_path: Path, builder) -> None:
    """What the decode loop hands the update instead of recomputing it: the same numbers."""
    folder = builder(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    torch.manual_seed(0)
    drawn = sample(model, tok, ["a longer prompt here", "hi"], samples_per_prompt=3, max_new_tokens=6,
                   temperature=0.8, generation="auto")
    assert drawn.prompt_mask[:, 0].eq(0).any()  # left padding present
    assert drawn.logprob is not None and drawn.entropy is not None
    with torch.no_grad():
        ref = sequence_logprobs(model, drawn.input_ids, drawn.attention_mask, drawn.completion_mask,
                                temperature=0.8, with_entropy=True)
    torch.testing.assert_close(drawn.logprob, ref.logprob, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(drawn.entropy, ref.entropy, atol=1e-4, rtol=1e-5)


def test_completions_end_at_eos_and_pad_after_it(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    # EOS about 30% likely at every position: rows end at different lengths, all well before 40 tokens.
    bump = torch.zeros(model.config.vocab_size)
    bump[tok.eos_token_id] = 4.0
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: out + bump)
    try:
        torch.manual_seed(0)
        drawn = sample(model, tok, PROMPTS, samples_per_prompt=50, max_new_tokens=40, temperature=TEMPERATURE,
                       generation="auto")
    finally:
        hook.remove()
    ids, mask = drawn.completion_ids, drawn.completion_mask
    assert ids.shape[1] < 40  # the loop stopped once every row had ended
    assert drawn.lengths.min() < drawn.lengths.max()
    after = mask == 0
    assert after.any() and ids[after].eq(tok.pad_token_id).all()


def _no_compiler(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
    """A torch.compile backend that fails as inductor does in an image without a C compiler."""
    raise RuntimeError("Failed to find C compiler")


def test_a_decode_step_that_cannot_compile_runs_uncompiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generation, "COMPILE_BACKEND", _no_compiler)
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="torch.compile of the decode step failed .*Failed to find C compiler"):
        drawn = sample(model, tok, PROMPTS, samples_per_prompt=2, max_new_tokens=4, temperature=TEMPERATURE,
                       generation="compiled")
    assert drawn.completion_ids.shape == (4, 4) and drawn.logprob is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the model is not compiled, nor warned about, again
        again = sample(model, tok, PROMPTS, samples_per_prompt=2, max_new_tokens=4, temperature=TEMPERATURE,
                       generation="compiled")
    assert again.completion_ids.shape == (4, 4)


def test_resolve_names_the_path_per_device() -> None:
    assert generation.resolve("auto", torch.device("cpu")) == "eager"
    assert generation.resolve("auto", torch.device("cuda")) == "compiled"
    assert generation.resolve("plain", torch.device("cuda")) == "plain"
    with pytest.raises(ValueError, match="unknown generation"):
        generation.resolve("fast", torch.device("cpu"))


def test_static_caches_are_bounded_least_recently_used_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts spread over many 32-token buckets do not pile up one static KV cache per bucket."""
    monkeypatch.setattr(generation, "COMPILE_BACKEND", "eager")  # dynamo without inductor: the caches are the point
    monkeypatch.setattr(generation, "MAX_STATIC_CACHES", 2, raising=False)
    folder = tiny_gpt2(tmp_path / "m", n_positions=160)
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)

    def draw(prompt: str) -> None:
        drawn = sample(model, tok, [prompt], samples_per_prompt=2, max_new_tokens=2, temperature=TEMPERATURE,
                       generation="compiled")
        assert drawn.completion_ids.shape == (2, 2) and drawn.logprob is not None
        assert torch.isfinite(drawn.logprob).all()

    torch.manual_seed(0)
    draw("a")  # bucket 32: a cache of 32 + 2 positions for 2 rows
    draw("b" * 40)  # bucket 64
    caches = generation._decode_step(model).caches
    assert list(caches) == [(2, 34), (2, 66)]
    first = caches[(2, 34)]
    draw("c")  # bucket 32 again: the same cache, reset, and now the most recently used
    assert caches[(2, 34)] is first and list(caches) == [(2, 66), (2, 34)]
    draw("d" * 70)  # a third bucket: the least recently used one (64) is dropped
    assert list(caches) == [(2, 34), (2, 98)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        draw("e" * 40)  # a dropped shape comes back: a fresh cache, and the graph compiled for its shape is reused
    assert list(caches) == [(2, 98), (2, 66)]


class _Recorder:
    """A reward that keeps the completions it is asked to score (and scores them 0)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        self.texts += completions
        return torch.zeros(len(completions))


def _evaluated(model, tok, generation_path: str, seed: int, n: int) -> tuple[dict, list[str]]:
    recorder = _Recorder()
    point = evaluate_policy(model, tok, model, recorder, PROMPTS, samples=n, max_new_tokens=3, temperature=TEMPERATURE,
                            seed=seed, batch_size=len(PROMPTS), generation=generation_path)
    return point, recorder.texts


def _text_counts(texts: list[str], categories: list[str]) -> list[torch.Tensor]:
    """Counts of each whole completion and of its first character (EOS first: the empty string)."""
    whole = torch.tensor([texts.count(c) for c in categories], dtype=torch.float64)
    firsts = sorted({c[:1] for c in categories})
    first = torch.tensor([sum(t[:1] == f for t in texts) for f in firsts], dtype=torch.float64)
    return [whole, first]


def test_evaluation_draws_with_the_runs_decode_loop_from_the_same_distribution(peaked) -> None:
    """evaluate_policy(generation=...): the decode loop the run trains with, holding the plain path's distribution."""
    model, tok = peaked
    n = 3000
    plain_point, plain = _evaluated(model, tok, "plain", seed=7, n=n)
    loop_point, loop = _evaluated(model, tok, "auto", seed=8, n=n)
    _, loop_same_seed = _evaluated(model, tok, "auto", seed=7, n=n)
    assert loop_same_seed != plain  # the seed draws other completions: the decode loop ran, not generate
    assert plain_point["kl"] == loop_point["kl"] == 0.0  # both log-probs of the KL come from one computation
    ps = []
    for row in range(len(PROMPTS)):
        a, b = loop[row * n : (row + 1) * n], plain[row * n : (row + 1) * n]
        categories = sorted(set(a) | set(b))
        ps += [chi_square_p(x, y) for x, y in zip(_text_counts(a, categories), _text_counts(b, categories), strict=True)]
    assert min(ps) > P_FLOOR


@pytest.mark.parametrize("path", ["auto", "compiled"])
def test_the_prompt_pass_runs_each_prompt_once_and_the_draws_keep_their_log_probs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """k samples of a prompt: the prompt goes through the model once, its cache is repeated (into the static
    cache on the compiled path), and every drawn token's log-probability is still the update's."""
    monkeypatch.setattr(generation, "COMPILE_BACKEND", "eager")  # dynamo without inductor: the cache is the point
    folder = tiny_gpt2(tmp_path / "m", n_positions=96)
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    rows_seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: rows_seen.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        torch.manual_seed(0)
        drawn = sample(model, tok, ["a longer prompt here", "hi"], samples_per_prompt=3, max_new_tokens=6,
                       temperature=0.8, generation=path)
    finally:
        hook.remove()
    assert rows_seen[0] == 2  # the prompt pass: one row per prompt, not 6
    assert drawn.completion_ids.shape[0] == 6 and drawn.prompt_mask[:, 0].eq(0).any()
    with torch.no_grad():
        ref = sequence_logprobs(model, drawn.input_ids, drawn.attention_mask, drawn.completion_mask, temperature=0.8,
                                with_entropy=True)
    torch.testing.assert_close(drawn.logprob, ref.logprob, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(drawn.entropy, ref.entropy, atol=1e-4, rtol=1e-5)
