"""The interface every merge method implements, and the iterative scheme they share.

A merge of M members relative to θ_init is a linear combination of their task vectors
δ_m = θ_m − θ_init:  θ_merged = θ_init + Σ_m w_m · δ_m.  Both SLERP and linear averaging are of this
form, and the weights depend on the task vectors only through their Gram matrix G_ij = ⟨δ_i, δ_j⟩
(norms and angles). So a method is a pure function Gram -> weights, computed once per group, and the
streaming engine applies the weights tensor by tensor. Nothing here touches a tensor.

M > 2 members are merged iteratively (the paper): merged_2 = pair(δ_1, δ_2, λ_2), then
merged_k = pair(merged_{k−1}, δ_k, λ_k). The running merge stays a combination Σ w δ, so its inner
products with the next member follow from G: ⟨merged, δ_k⟩ = Σ_m w_m G_mk, ‖merged‖² = wᵀ G w.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Fallback = Literal["colinear", "zero"]


@dataclass(frozen=True)
class PairWeights:
    """merged = a · (running merge) + b · (next task vector)."""

    a: float
    b: float
    fallback: Fallback | None = None


@dataclass(frozen=True)
class Step:
    """One pairwise step of an iterative merge: the running merge against member `member` (0-based)."""

    member: int
    lam: float
    angle_deg: float | None  # None when undefined: one side is a zero vector
    fallback: Fallback | None


@dataclass(frozen=True)
class Combination:
    """θ_merged = θ_init + Σ_m weights[m] · δ_m, and how the weights came about."""

    weights: tuple[float, ...]
    steps: tuple[Step, ...]

    @property
    def init_weight(self) -> float:
        """Weight of θ_init once the merge is written as Σ over checkpoints: 1 − Σ w_m."""
        return 1.0 - math.fsum(self.weights)


class MergeMethod(Protocol):
    """A merge method: a pure function from the Gram matrix of the task vectors to their weights."""

    name: str

    def combine(self, gram: Sequence[Sequence[float]], lam: float | None) -> Combination:
        """Weights of the M task vectors whose Gram matrix is `gram` (M×M); λ (None: 1/M) as in step_lambdas."""
        ...


PairRule = Callable[[float, float, float, float], PairWeights]


def step_lambdas(members: int, lam: float | None = None) -> list[float]:
    """λ of each iterative step: 1/k when the k-th member joins (a uniform merge), λ for the last.

    For M = 2 that is the paper's single λ. For M > 2 the earlier steps keep 1/k so that the first
    M − 1 members enter with equal weight, and an explicit λ sets the last member's weight against
    their merge; the default λ = 1/M gives the paper's slerp_M = slerp(slerp_{M−1}, θ_M, 1/M).
    """
    if members < 2:
        return []
    last = 1.0 / members if lam is None else float(lam)
    if not 0.0 <= last <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    return [1.0 / k for k in range(2, members)] + [last]


def cosine(aa: float, bb: float, ab: float) -> float | None:
    """cos of the angle between two vectors from ⟨a,a⟩, ⟨b,b⟩, ⟨a,b⟩; None if one is zero."""
    if aa <= 0.0 or bb <= 0.0:
        return None
    return max(-1.0, min(1.0, ab / math.sqrt(aa * bb)))


def angle_deg(aa: float, bb: float, ab: float) -> float | None:
    c = cosine(aa, bb, ab)
    return None if c is None else math.degrees(math.acos(c))


def iterate(gram: Sequence[Sequence[float]], lam: float | None, rule: PairRule) -> Combination:
    """Merge M task vectors pairwise, in member order, with the pair rule of a method."""
    g = [[float(x) for x in row] for row in gram]
    m = len(g)
    if m == 0 or any(len(row) != m for row in g):
        raise ValueError(f"gram must be a non-empty square matrix, got {m} rows")
    if m == 1:
        return Combination(weights=(1.0,), steps=())
    w = [1.0] + [0.0] * (m - 1)
    steps = []
    for k, lam_k in zip(range(1, m), step_lambdas(m, lam), strict=True):
        # The running merge is Σ_j w_j δ_j (j < k); its inner products follow from the Gram matrix.
        aa = math.fsum(w[i] * w[j] * g[i][j] for i in range(k) for j in range(k))
        ab = math.fsum(w[j] * g[j][k] for j in range(k))
        bb = g[k][k]
        pair = rule(max(aa, 0.0), bb, ab, lam_k)
        w = [pair.a * x for x in w]
        w[k] = pair.b
        steps.append(Step(member=k, lam=lam_k, angle_deg=angle_deg(max(aa, 0.0), bb, ab), fallback=pair.fallback))
    return Combination(weights=tuple(w), steps=tuple(steps))
