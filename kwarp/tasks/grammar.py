"""The review grammar: short product and film reviews with a chosen sentiment.

A review is an opening (what a prompt holds: "The battery of this phone", "I watched this film
last night and") and a continuation (what the policy writes: " is not very good, but the screen
is lovely."). Sentiment is steered by a target value in lexicon units (-3 .. +3): every
sentiment-bearing phrase picks its structure (negated or not, intensified or not) and then the
word whose score brings the phrase closest to its target, with some randomness. The grammar never
repeats a sentiment word within a review and never glues sentiment words together, so degenerate
text lies outside everything the reward model is trained on.

Everything is drawn from a `random.Random` passed in: the same seed gives the same texts.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from kwarp.tasks.sentiment import NEGATION_FACTOR, Lexicon, lexicon, read_data

DOMAINS = ("product", "film")
_SLOT = re.compile(r"\{(\w+)\}")
_VOWELS = frozenset("aeiou")

# How often a phrase is negated / intensified, and how sharply the word choice follows the target.
P_NEGATED = 0.15
P_INTENSIFIED = 0.35
P_NOUN_PHRASE = 0.2
P_SENTIMENT_NOUN = 0.08
P_SECOND_CLAUSE = 0.45
P_CLOSING = 0.25
P_EXCLAIM = 0.15
CHOICE_TEMPERATURE = 0.35
# Verbs live in the first person; films are told in the past, products in the present.
_VERBS = (
    ("love", "loved"),
    ("adore", "adored"),
    ("like", "liked"),
    ("enjoy", "enjoyed"),
    ("appreciate", "appreciated"),
    ("hate", "hated"),
    ("dislike", "disliked"),
    ("regret", "regretted"),
)
_TENSE = {"product": 0, "film": 1}
_VERB_INTENSIFIERS = ("really", "absolutely", "truly", "genuinely")
_OBJECT = {"regret": "buying it", "regretted": "watching it"}


@dataclass(frozen=True)
class Opening:
    """The start of a review. kind 'subject' expects a predicate, 'clause' a whole clause."""

    text: str
    domain: str
    kind: str
    thing: str  # the product or film noun ("phone", "comedy")
    aspect: str | None  # the aspect named in the opening, if any


@dataclass(frozen=True)
class Review:
    opening: Opening
    continuation: str  # starts with a space or a comma: text = opening.text + continuation

    @property
    def text(self) -> str:
        return self.opening.text + self.continuation


def _article(word: str) -> str:
    return "an" if word[0] in _VOWELS else "a"


@cache
def grammar_data() -> dict[str, Any]:
    return json.loads(read_data("grammar.json"))


class ReviewGrammar:
    """Samples openings and continuations; pure apart from the random generator it is given."""

    def __init__(self, data: dict[str, Any] | None = None, lex: Lexicon | None = None, extra_clauses: int = 0):
        """`extra_clauses`: after the optional second clause, up to this many more, each with the same
        probability (longer reviews for the medium task; 0 keeps the small task's grammar)."""
        self.extra_clauses = extra_clauses
        self.data = data if data is not None else grammar_data()
        self.lex = lex if lex is not None else lexicon()
        self.adjectives = {
            d: sorted({**self.lex.adjectives["general"], **self.lex.adjectives[d]}.items()) for d in DOMAINS
        }
        self.nouns = {d: sorted({**self.lex.nouns["general"], **self.lex.nouns[d]}.items()) for d in DOMAINS}
        self.verbs = {
            d: [(forms[_TENSE[d]], self.lex.verbs[forms[_TENSE[d]]]) for forms in _VERBS] for d in DOMAINS
        }
        self._base = {past: base for base, past in _VERBS}
        self.intensifiers = sorted(self.lex.intensifiers.items())

    # ---------------------------------------------------------------- openings

    def aspects(self, domain: str, thing: str) -> list[str]:
        if domain == "product":
            return self.data["products"][thing] + self.data["product_aspects"]
        return list(self.data["film_aspects"])

    def opening(self, rng: random.Random, domain: str | None = None) -> Opening:
        domain = domain or rng.choice(DOMAINS)
        kind = rng.choice(("subject", "clause"))
        template = rng.choice(self.data["openings"][domain][kind])
        thing = rng.choice(sorted(self.data["products"]) if domain == "product" else self.data["films"])
        aspect = rng.choice(self.aspects(domain, thing)) if "{aspect}" in template else None
        fill = {"product": thing, "film": thing, "aspect": aspect}

        def slot(m: re.Match[str]) -> str:
            name = m.group(1)
            return fill[name] if fill.get(name) is not None else rng.choice(self.data[name])

        return Opening(_SLOT.sub(slot, template), domain, kind, thing, aspect)

    def all_openings(self) -> Iterator[str]:
        """Every distinct opening the grammar can produce (for sizing prompt sets)."""
        for domain in DOMAINS:
            things = sorted(self.data["products"]) if domain == "product" else self.data["films"]
            for kind in ("subject", "clause"):
                for template in self.data["openings"][domain][kind]:
                    names = _SLOT.findall(template)
                    for thing in things:
                        choices: list[list[str]] = []
                        for name in names:
                            if name in ("product", "film"):
                                choices.append([thing])
                            elif name == "aspect":
                                choices.append(self.aspects(domain, thing))
                            else:
                                choices.append(self.data[name])
                        yield from _expand(template, names, choices)

    # ---------------------------------------------------------------- sentiment phrases

    def _pick(self, rng: random.Random, items: list[tuple[str, float]], target: float, used: set[str]) -> str:
        """A word whose score is near `target`: softmax over -|score - target| / T, never reusing a word."""
        pool = [(w, s) for w, s in items if w not in used] or items
        weights = [math.exp(-abs(s - target) / CHOICE_TEMPERATURE) for _, s in pool]
        word = rng.choices(pool, weights=weights)[0][0]
        used.add(word)
        return word

    def adjective_phrase(
        self, rng: random.Random, domain: str, thing: str | None, target: float, used: set[str]
    ) -> str:
        """'very good', 'a truly awful phone', 'a masterpiece' (noun phrases only when `thing` is given)."""
        if thing is not None and rng.random() < P_SENTIMENT_NOUN:
            noun = self._pick(rng, self.nouns[domain], target, used)
            return f"{_article(noun)} {noun}"
        intensifier, mult = None, 1.0
        if rng.random() < P_INTENSIFIED:
            intensifier = self._pick(rng, self.intensifiers, rng.uniform(0.5, 1.8), used)
            mult = self.lex.intensifiers[intensifier]
        adjective = self._pick(rng, self.adjectives[domain], _clamp(target / mult), used)
        words = f"{intensifier} {adjective}" if intensifier else adjective
        if thing is not None and rng.random() < P_NOUN_PHRASE:
            return f"{_article(words)} {words} {thing}"
        return words

    def _predicate(
        self, rng: random.Random, domain: str, thing: str | None, target: float, used: set[str]
    ) -> str:
        """Copula and adjective phrase; `thing` is None when the subject is an aspect, not the thing itself."""
        negated = rng.random() < P_NEGATED
        copula = rng.choice(self.data["copulas"][domain])
        if negated:
            # Flip the target so that "not X" lands near it; "is not", "isn't", "was not", "wasn't".
            base = "is" if domain == "product" else "was"
            copula = rng.choice((f"{base} not", f"{base}n't"))
            target = target / NEGATION_FACTOR
        phrase = self.adjective_phrase(rng, domain, thing, target, used)
        if not negated and phrase.split()[0] in ("a", "an"):
            copula = "is" if domain == "product" else "was"  # "feels a great phone" is not English
        return f"{copula} {phrase}"

    def _verb_clause(self, rng: random.Random, domain: str, target: float, used: set[str]) -> str:
        negated = rng.random() < P_NEGATED
        if negated:
            target = target / NEGATION_FACTOR
        verb = self._pick(rng, self.verbs[domain], _clamp(target), used)
        obj = _OBJECT.get(verb, "it")
        if negated:
            aux = rng.choice(("do not", "don't") if domain == "product" else ("did not", "didn't"))
            base = self._base.get(verb, verb)
            return f"I {aux} {base} {obj}"
        adverbs = [a for a in _VERB_INTENSIFIERS if a not in used]
        if adverbs and rng.random() < P_INTENSIFIED:
            adverb = rng.choice(adverbs)
            used.add(adverb)
            return f"I {adverb} {verb} {obj}"
        return f"I {verb} {obj}"

    def clause(self, rng: random.Random, opening: Opening, target: float, used: set[str]) -> str:
        domain, thing = opening.domain, opening.thing
        form = rng.random()
        if form < 0.3:
            return "it " + self._predicate(rng, domain, thing, target, used)
        if form < 0.6:
            others = [a for a in self.aspects(domain, thing) if a != opening.aspect and a not in used]
            aspect = rng.choice(others)
            used.add(aspect)
            return f"the {aspect} " + self._predicate(rng, domain, None, target, used)
        if form < 0.8:
            return self._verb_clause(rng, domain, target, used)
        return "I think it " + self._predicate(rng, domain, thing, target, used)

    def closing(self, rng: random.Random, opening: Opening, target: float, used: set[str]) -> str:
        template = rng.choice(self.data["closings"][opening.domain])
        if "recommend" in template:
            return "I would recommend it" if target >= 0 else "I would not recommend it"
        if "{verb}" in template:
            return self._verb_clause(rng, opening.domain, target, used)
        return template.replace(
            "{adjp}", self.adjective_phrase(rng, opening.domain, opening.thing, target, used)
        )

    # ---------------------------------------------------------------- whole reviews

    def continuation(self, rng: random.Random, opening: Opening, mood: float, spread: float) -> str:
        """The rest of a review whose phrases aim at mood + N(0, spread) each."""
        used: set[str] = set()

        def target() -> float:
            return _clamp(rng.gauss(mood, spread))

        if opening.kind == "subject":
            subject = opening.thing if opening.aspect is None else None
            text = " " + self._predicate(rng, opening.domain, subject, target(), used)
        else:
            text = " " + self.clause(rng, opening, target(), used)
        if rng.random() < P_SECOND_CLAUSE:
            connective = rng.choice(self.data["connectives"])
            text += f", {connective} " + self.clause(rng, opening, target(), used)
            for _ in range(self.extra_clauses):
                if rng.random() >= P_SECOND_CLAUSE:
                    break
                connective = rng.choice(self.data["connectives"])
                text += f", {connective} " + self.clause(rng, opening, target(), used)
        text += "!" if rng.random() < P_EXCLAIM else "."
        if rng.random() < P_CLOSING:
            text += " " + self.closing(rng, opening, target(), used) + "."
        return text

    def review(
        self, rng: random.Random, mood: float, spread: float, opening: Opening | None = None
    ) -> Review:
        opening = opening or self.opening(rng)
        return Review(opening, self.continuation(rng, opening, mood, spread))


def _clamp(x: float, bound: float = 3.0) -> float:
    return max(-bound, min(bound, x))


def _expand(template: str, names: list[str], choices: list[list[str]]) -> Iterator[str]:
    if not names:
        yield template
        return
    head, *rest = names
    for value in choices[0]:
        yield from _expand(template.replace("{" + head + "}", value, 1), rest, choices[1:])
