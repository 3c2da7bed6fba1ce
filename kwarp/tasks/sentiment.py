"""The demo task's hidden scoring rule: the "gold" reward the learned reward model imitates.

A review's sentiment is read from a graded lexicon (`data/lexicon.json`, scores from -3 to +3),
in the manner of rule-based analysers such as VADER:

- an intensifier right before a sentiment word multiplies it ("very good" = 1.5 x good), the
  product of a chain capped at 2;
- a negator up to three words before it flips and damps it ("not bad" = -0.6 x bad = +1.2,
  "not great" = -1.4);
- a contrast word ("but", "yet", "however") halves what came before it in the sentence and weighs
  what follows by 1.5 ("the screen is great but the battery is awful" is negative);
- the sum s of contributions is squashed to s / sqrt(s^2 + 36), in (-1, 1), so that piling up
  praise saturates, but only beyond what the grammar itself writes: sqrt(36) = 6 raw units is
  about the 90th percentile of the raw sentiment of the grammar's most positive reviews (mood +3),
  so on-distribution text lies in the squash's near-linear part and a policy that moves further
  from the SFT policy can still earn more (the paper's reward keeps growing over the KL range it
  explores). Version 1 used 6, which put the grammar's best reviews at 0.81 of the ceiling and
  capped every RL run near the SFT policy (docs/reproduction.md, pilots).

Degenerate text is penalised, which the learned reward model never saw in its training pairs and
so cannot know: each repeated sentiment word or immediately repeated word costs 0.5, each
sentiment word glued to another ("excellent amazing") costs 0.5, a text whose words are less than
half distinct loses up to 2, a completion of fewer than two words loses 1, and a text that does
not end with a full stop or an exclamation mark loses 0.5. The total penalty is capped at 3, so
gold scores lie in [-4, 1].

This module is pure Python (no torch) so that `true_score` is cheap to import as a
`reward.callable` and in reports.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import pairwise
from typing import Any

NEGATION_FACTOR = -0.6
INTENSIFIER_CAP = 2.0
NEGATION_WINDOW = 3
CONTRAST_BEFORE = 0.5
CONTRAST_AFTER = 1.5
SQUASH_ALPHA = 36.0

REPEAT_PENALTY = 0.5
SALAD_PENALTY = 0.5
DIVERSITY_FLOOR = 0.5
DIVERSITY_SLOPE = 4.0
MIN_COMPLETION_WORDS = 2
SHORT_PENALTY = 1.0
UNFINISHED_PENALTY = 0.5
PENALTY_CAP = 3.0

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.!?,;:]")
_SENTENCE_END = frozenset(".!?")
_PUNCT = frozenset(".!?,;:")
_ENDINGS = (".", "!", "?")
# Words that end a negator's reach: it does not cross into the next clause.
_SCOPE_BREAK = frozenset({"and", "but", "yet", "however", "although", "while", "or"})


@dataclass(frozen=True)
class Lexicon:
    """Graded sentiment words and the modifiers the rule understands."""

    scores: dict[str, float]
    intensifiers: dict[str, float]
    negators: frozenset[str]
    contrast: frozenset[str]
    adjectives: dict[str, dict[str, float]]
    nouns: dict[str, dict[str, float]]
    verbs: dict[str, float]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Lexicon:
        scores: dict[str, float] = {}
        for group in ("adjectives", "nouns"):
            for words in raw[group].values():
                scores.update(words)
        scores.update(raw["verbs"])
        return cls(
            scores=scores,
            intensifiers=dict(raw["intensifiers"]),
            negators=frozenset(raw["negators"]),
            contrast=frozenset(raw["contrast"]),
            adjectives={k: dict(v) for k, v in raw["adjectives"].items()},
            nouns={k: dict(v) for k, v in raw["nouns"].items()},
            verbs=dict(raw["verbs"]),
        )


def read_data(name: str) -> str:
    """Text of a data file shipped in kwarp/tasks/data."""
    return resources.files("kwarp.tasks").joinpath("data", name).read_text(encoding="utf-8")


@cache
def lexicon() -> Lexicon:
    return Lexicon.from_dict(json.loads(read_data("lexicon.json")))


def tokenize(text: str) -> list[str]:
    """Lower-cased words (contractions kept whole) and punctuation marks."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Judgement:
    """The parts of a gold score, for tests and reports."""

    raw: float  # sum of weighted word contributions
    sentiment: float  # raw squashed into (-1, 1)
    repetition: float
    salad: float
    diversity: float
    short: float
    unfinished: float

    @property
    def penalty(self) -> float:
        return min(PENALTY_CAP, self.repetition + self.salad + self.diversity + self.short + self.unfinished)

    @property
    def score(self) -> float:
        return self.sentiment - self.penalty


def _contributions(tokens: list[str], lex: Lexicon) -> list[float]:
    out: list[float] = []
    sentence_start = 0  # index into `out` of the current sentence's first contribution
    weight = 1.0
    for i, tok in enumerate(tokens):
        if tok in _SENTENCE_END:
            sentence_start, weight = len(out), 1.0
            continue
        if tok in lex.contrast:
            for k in range(sentence_start, len(out)):
                out[k] *= CONTRAST_BEFORE
            weight = CONTRAST_AFTER
            continue
        value = lex.scores.get(tok)
        if value is None:
            continue
        j, mult = i - 1, 1.0
        while j >= 0 and tokens[j] in lex.intensifiers:
            mult *= lex.intensifiers[tokens[j]]
            j -= 1
        value *= min(mult, INTENSIFIER_CAP)
        for k in range(j, max(j - NEGATION_WINDOW, -1), -1):
            t = tokens[k]
            if t in lex.negators:
                value *= NEGATION_FACTOR
                break
            if t in _PUNCT or t in _SCOPE_BREAK or t in lex.scores:
                break
        out.append(value * weight)
    return out


def judge(text: str, completion: str | None = None) -> Judgement:
    """Score a whole review; `completion` (its generated part) is what the length check applies to."""
    lex = lexicon()
    tokens = tokenize(text)
    raw = sum(_contributions(tokens, lex))
    sentiment = raw / math.sqrt(raw * raw + SQUASH_ALPHA)

    words = [t for t in tokens if t not in _PUNCT]
    counts = Counter(w for w in words if w in lex.scores or w in lex.intensifiers)
    repeats = sum(c - 1 for c in counts.values())
    repeats += sum(1 for a, b in pairwise(tokens) if a == b and a not in _PUNCT)
    glued = sum(1 for a, b in pairwise(tokens) if a in lex.scores and b in lex.scores)
    distinct = len(set(words)) / len(words) if words else 0.0
    completion_words = (
        len([t for t in tokenize(completion) if t not in _PUNCT]) if completion is not None else len(words)
    )
    return Judgement(
        raw=raw,
        sentiment=sentiment,
        repetition=REPEAT_PENALTY * repeats,
        salad=SALAD_PENALTY * glued,
        diversity=DIVERSITY_SLOPE * max(0.0, DIVERSITY_FLOOR - distinct),
        short=SHORT_PENALTY if completion_words < MIN_COMPLETION_WORDS else 0.0,
        unfinished=0.0 if text.rstrip().endswith(_ENDINGS) else UNFINISHED_PENALTY,
    )


def join(prompt: str, completion: str) -> str:
    """prompt + completion, with a space between them when the tokenizer's decode dropped it."""
    if prompt and completion and not prompt[-1].isspace() and completion[0].isalnum():
        return f"{prompt} {completion}"
    return prompt + completion


def score_text(text: str) -> float:
    return judge(text).score


def true_score(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """The gold reward of each (prompt, completion): the hidden rule the reward model was trained on.

    Usable as `reward.callable: kwarp.tasks.sentiment:true_score` in a WarpRun.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"true_score: {len(prompts)} prompts but {len(completions)} completions")
    return [judge(join(p, c), c).score for p, c in zip(prompts, completions, strict=True)]
