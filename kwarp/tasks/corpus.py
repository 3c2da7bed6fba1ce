"""The demo task's texts: SFT reviews, preference pairs for the reward model, and prompt sets.

- SFT texts have a mood near neutral (N(0, 0.9) in lexicon units) and a wide spread between their
  phrases, so most are mixed: the SFT policy writes middling reviews and RL has room to raise
  the reward.
- Preference pairs share an opening and compare two continuations whose moods span the whole
  scale; some continuations are cut short (no ending, sometimes empty), as a sampler capped at a
  token budget produces. Labels come from the hidden rule through a Bradley-Terry draw,
  P(a preferred) = sigmoid((gold_a - gold_b) / LABEL_TEMPERATURE), so they are noisy like
  human labels. No pair holds repeated or glued sentiment words: the reward model never learns
  that degenerate text is bad, which is what makes it exploitable at high KL.
- Prompt sets are distinct review openings; the eval prompts are disjoint from the train prompts.

Each part is drawn from its own random stream seeded from (seed, part), so the parts do not
shift when another part's size changes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from kwarp.tasks.grammar import Opening, Review, ReviewGrammar
from kwarp.tasks.sentiment import judge

SFT_MOOD_STD = 0.9
SFT_SPREAD = 1.2
PAIR_SPREAD = 0.8
P_TRUNCATED = 0.15
LABEL_TEMPERATURE = 0.1


@dataclass(frozen=True)
class Pair:
    """Two continuations of one opening, as a labeller ranked them."""

    prompt: str
    chosen: str
    rejected: str
    gold_chosen: float
    gold_rejected: float

    @property
    def chosen_text(self) -> str:
        return self.prompt + self.chosen

    @property
    def rejected_text(self) -> str:
        return self.prompt + self.rejected


@dataclass(frozen=True)
class CorpusSizes:
    sft_texts: int = 20_000
    rm_train_pairs: int = 16_000
    rm_eval_pairs: int = 2_000
    train_prompts: int = 2_000
    # Held-out prompts: enough to resolve 0.02 reward between paired policies (docs/reproduction.md).
    eval_prompts: int = 1000


@dataclass(frozen=True)
class Corpus:
    sft_texts: list[str]
    rm_train: list[Pair]
    rm_eval: list[Pair]
    train_prompts: list[str]
    eval_prompts: list[str]


def _rng(seed: int, part: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"kwarp-sentiment/{seed}/{part}")


def sft_texts(grammar: ReviewGrammar, rng: random.Random, n: int) -> list[str]:
    return [grammar.review(rng, rng.gauss(0.0, SFT_MOOD_STD), SFT_SPREAD).text for _ in range(n)]


def _truncate(rng: random.Random, review: Review) -> str:
    """The continuation cut at a word boundary before its end (possibly empty): no full stop."""
    words = review.continuation.split(" ")[1:]  # continuation starts with a space
    keep = rng.randrange(0, len(words))
    return "".join(" " + w for w in words[:keep]).rstrip(",.!")


def _continuation(grammar: ReviewGrammar, rng: random.Random, opening: Opening) -> str:
    mood = rng.uniform(-3.0, 3.0) if rng.random() < 0.5 else rng.gauss(0.0, SFT_MOOD_STD)
    review = grammar.review(rng, mood, PAIR_SPREAD, opening=opening)
    return _truncate(rng, review) if rng.random() < P_TRUNCATED else review.continuation


def pairs(grammar: ReviewGrammar, rng: random.Random, n: int) -> list[Pair]:
    out: list[Pair] = []
    while len(out) < n:
        opening = grammar.opening(rng)
        a, b = _continuation(grammar, rng, opening), _continuation(grammar, rng, opening)
        if a == b:
            continue
        ga = judge(opening.text + a, a).score
        gb = judge(opening.text + b, b).score
        a_wins = rng.random() < 1.0 / (1.0 + math.exp(-(ga - gb) / LABEL_TEMPERATURE))
        out.append(Pair(opening.text, a, b, ga, gb) if a_wins else Pair(opening.text, b, a, gb, ga))
    return out


def distinct_openings(grammar: ReviewGrammar, rng: random.Random) -> Iterator[str]:
    seen: set[str] = set()
    while True:
        text = grammar.opening(rng).text
        if text not in seen:
            seen.add(text)
            yield text


def prompt_sets(
    grammar: ReviewGrammar, rng: random.Random, n_train: int, n_eval: int
) -> tuple[list[str], list[str]]:
    """Disjoint (train, eval) lists of distinct openings."""
    available = sum(1 for _ in grammar.all_openings())
    if n_train + n_eval > available:
        raise ValueError(f"the grammar has {available} distinct openings; {n_train} + {n_eval} prompts asked")
    stream = distinct_openings(grammar, rng)
    eval_prompts = [next(stream) for _ in range(n_eval)]
    train_prompts = [next(stream) for _ in range(n_train)]
    return train_prompts, eval_prompts


def make_corpus(seed: int, sizes: CorpusSizes = CorpusSizes(), extra_clauses: int = 0) -> Corpus:
    grammar = ReviewGrammar(extra_clauses=extra_clauses)
    train_prompts, eval_prompts = prompt_sets(
        grammar, _rng(seed, "prompts"), sizes.train_prompts, sizes.eval_prompts
    )
    return Corpus(
        sft_texts=sft_texts(grammar, _rng(seed, "sft"), sizes.sft_texts),
        rm_train=pairs(grammar, _rng(seed, "rm-train"), sizes.rm_train_pairs),
        rm_eval=pairs(grammar, _rng(seed, "rm-eval"), sizes.rm_eval_pairs),
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
    )
