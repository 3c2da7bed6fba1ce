"""Linear averaging of task vectors: θ_init + (1−λ)·δ_1 + λ·δ_2, iterated for M > 2 (the mean at λ = 1/M).

The baseline SLERP is compared against: two orthogonal task vectors of equal norm average to a vector
1/√2 as long, which is why linear merges lose reward (docs/method.md, stage 2). Angles are still
reported, so that the two methods' merge reports read the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from kwarp.merger.combination import Combination, PairWeights, iterate


def linear_weights(aa: float, bb: float, ab: float, lam: float) -> PairWeights:
    del aa, bb, ab  # the weights do not depend on the geometry
    return PairWeights(1.0 - lam, lam)


class Linear:
    name = "linear"

    def combine(self, gram: Sequence[Sequence[float]], lam: float | None) -> Combination:
        return iterate(gram, lam, linear_weights)
