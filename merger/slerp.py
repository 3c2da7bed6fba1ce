"""SLERP of task vectors (WARP stage 2): spherical interpolation of δ_m = θ_m − θ_init.

    slerp(θ_init, θ_1, θ_2, λ) = θ_init + sin((1−λ)Ω)/sin Ω · δ_1 + sin(λΩ)/sin Ω · δ_2,
    cos Ω = ⟨δ_1, δ_2⟩ / (‖δ_1‖ ‖δ_2‖)

Task vectors of independent RL runs are nearly orthogonal; the linear average of two orthogonal
vectors of equal norm has 1/√2 of their norm, SLERP keeps it (more reward, slightly more KL).

Degenerate cases, each finite and continuous where a limit exists:

- |cos Ω| > COLINEAR_COS (Ω within 1.8° of 0° or 180°): linear interpolation (1−λ)·δ_1 + λ·δ_2.
  Near 0° this *is* the limit of the formula (sin(xΩ)/sin Ω → x), and at the threshold the two differ
  by less than 1.3e-4 relative. Near 180° the great circle through antipodal points is undefined
  and the coefficients grow like 1/sin Ω, amplifying rounding noise in δ_1 + δ_2; falling back is
  what mergekit does with the same threshold.
- A zero task vector (a member that did not move): the angle is undefined, and the limit δ_2 → 0
  depends on the direction of approach (the weight of δ_1 tends to sin((1−λ)Ω)/sin Ω, which runs
  from 1−λ at Ω → 0 to cos(λπ/2) at Ω = 90°). kwarp takes linear interpolation, the Ω → 0 limit:
  the zero vector contributes nothing and the other keeps its linear weight (1−λ)·δ_1. It never
  extrapolates, it is mergekit's fallback, and a member that stayed at θ_init pulls the merge
  towards θ_init exactly as it would in an average. Both zero gives θ_init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kwarp.merger.combination import Combination, PairWeights, cosine, iterate

if TYPE_CHECKING:  # the weights are pure arithmetic; only the reference forms below touch tensors
    import torch

# mergekit's DOT_THRESHOLD: above it the vectors count as colinear (Ω < 1.81° or Ω > 178.19°).
COLINEAR_COS = 0.9995


def slerp_weights(aa: float, bb: float, ab: float, lam: float) -> PairWeights:
    """Weights (a, b) with slerp(δ_a, δ_b, λ) = a·δ_a + b·δ_b, from ⟨δ_a,δ_a⟩, ⟨δ_b,δ_b⟩, ⟨δ_a,δ_b⟩."""
    c = cosine(aa, bb, ab)
    if c is None:
        return PairWeights(1.0 - lam, lam, "zero")
    if abs(c) > COLINEAR_COS:
        return PairWeights(1.0 - lam, lam, "colinear")
    omega = math.acos(c)
    sin_omega = math.sin(omega)
    # At λ = 0 and λ = 1 these are exactly (1, 0) and (0, 1): sin(Ω)/sin(Ω) is 1.0 in floating point.
    return PairWeights(math.sin((1.0 - lam) * omega) / sin_omega, math.sin(lam * omega) / sin_omega)


class Slerp:
    """Spherical interpolation of task vectors, iterated for M > 2 (one angle per step)."""

    name = "slerp"

    def combine(self, gram: Sequence[Sequence[float]], lam: float | None) -> Combination:
        return iterate(gram, lam, slerp_weights)


def gram(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gram matrix ⟨v_i, v_j⟩ in float64 of same-shaped tensors (whole tensors; the engine streams)."""
    import torch

    flat = torch.stack([v.detach().reshape(-1).to(torch.float64) for v in vectors])
    return flat @ flat.T


def slerp(
    init: torch.Tensor, members: Sequence[torch.Tensor], lam: float | None = None
) -> torch.Tensor:
    """SLERP of in-memory tensors treated as one group (float64 maths, result in init's dtype).

    The reference form of what the streaming engine computes; handy for small tensors and tests.
    """
    import torch

    base = init.detach().to(torch.float64)
    deltas = [m.detach().to(torch.float64) - base for m in members]
    weights = Slerp().combine(gram(deltas).tolist(), lam).weights
    out = base.clone()
    for w, d in zip(weights, deltas, strict=True):
        out += w * d
    return out.to(init.dtype)
