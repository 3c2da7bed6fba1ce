"""Properties of the merge maths (hypothesis): SLERP endpoints, symmetry, norms, degenerate cases,
the iterative M > 2 scheme, LiTI endpoints, and the streaming kernels against float64 references.

The references here are written from docs/method.md directly on vectors, independent of the
Gram-matrix formulation the merger uses.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kwarp.merger.chunked import Scratch, combine_into, gram_of
from kwarp.merger.combination import Combination, step_lambdas
from kwarp.merger.linear import Linear
from kwarp.merger.liti import liti
from kwarp.merger.slerp import COLINEAR_COS, Slerp, slerp

torch.set_num_threads(1)
SLERP, LINEAR = Slerp(), Linear()
PROPS = settings(max_examples=60, deadline=None)

dims = st.integers(min_value=2, max_value=12)
lams = st.floats(min_value=0.0, max_value=1.0)
scales = st.sampled_from([1e-6, 1e-3, 1.0, 1e3])


@st.composite
def vectors(draw: st.DrawFn, dim: int | None = None, count: int = 1) -> list[torch.Tensor]:
    n = draw(dims) if dim is None else dim
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen, dtype=torch.float64) * draw(scales) for _ in range(count)]


def gram64(vs: list[torch.Tensor]) -> list[list[float]]:
    flat = torch.stack(vs)
    return (flat @ flat.T).tolist()


def merged(vs: list[torch.Tensor], comb: Combination) -> torch.Tensor:
    return sum((w * v for w, v in zip(comb.weights, vs, strict=True)), torch.zeros_like(vs[0]))


def direct_slerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """The paper's formula on two task vectors (non-degenerate case only)."""
    omega = torch.arccos(torch.clamp(a @ b / (a.norm() * b.norm()), -1.0, 1.0))
    return (torch.sin((1 - lam) * omega) * a + torch.sin(lam * omega) * b) / torch.sin(omega)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits, so that equality is bit for bit (-0.0 differs from 0.0)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm())))))


def orthonormal_pair(vs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = vs
    b = b - (a @ b) / (a @ a) * a
    return a, b * (a.norm() / b.norm())


@PROPS
@given(vectors(count=2))
def test_lambda_endpoints_are_exact(vs: list[torch.Tensor]) -> None:
    g = gram64(vs)
    assert SLERP.combine(g, 0.0).weights == (1.0, 0.0)
    assert SLERP.combine(g, 1.0).weights == (0.0, 1.0)
    assert LINEAR.combine(g, 0.0).weights == (1.0, 0.0)
    assert LINEAR.combine(g, 1.0).weights == (0.0, 1.0)


@PROPS
@given(vectors(count=2), lams)
def test_slerp_is_symmetric(vs: list[torch.Tensor], lam: float) -> None:
    a, b = vs
    ab = merged([a, b], SLERP.combine(gram64([a, b]), lam))
    ba = merged([b, a], SLERP.combine(gram64([b, a]), 1.0 - lam))
    torch.testing.assert_close(ab, ba, rtol=1e-9, atol=1e-12 * float(a.norm() + b.norm()))


@PROPS
@given(vectors(count=2), lams)
def test_slerp_matches_the_formula_and_keeps_equal_norms(vs: list[torch.Tensor], lam: float) -> None:
    a, b = vs
    b = b * (a.norm() / b.norm())  # equal norms
    assume(abs(float(a @ b / (a.norm() * b.norm()))) < COLINEAR_COS)
    comb = SLERP.combine(gram64([a, b]), lam)
    out = merged([a, b], comb)
    torch.testing.assert_close(out, direct_slerp(a, b, lam), rtol=1e-9, atol=1e-12 * float(a.norm()))
    assert float(out.norm()) == pytest.approx(float(a.norm()), rel=1e-9)
    # On the great circle: the merge is λΩ away from a (when it is not a itself).
    omega = angle(a, b)
    if lam > 0.0:
        assert angle(out, a) == pytest.approx(lam * omega, abs=1e-6)
    assert comb.steps[0].angle_deg == pytest.approx(math.degrees(omega), abs=1e-6)


@PROPS
@given(vectors(count=2))
def test_orthogonal_norms_slerp_keeps_linear_shrinks(vs: list[torch.Tensor]) -> None:
    a, b = orthonormal_pair(vs)
    g = gram64([a, b])
    norm = float(a.norm())
    assert float(merged([a, b], SLERP.combine(g, 0.5)).norm()) == pytest.approx(norm, rel=1e-9)
    assert float(merged([a, b], LINEAR.combine(g, 0.5)).norm()) == pytest.approx(norm / math.sqrt(2), rel=1e-9)


@PROPS
@given(vectors(count=1), st.floats(min_value=-100, max_value=100), lams)
def test_colinear_falls_back_to_linear_interpolation(vs: list[torch.Tensor], factor: float, lam: float) -> None:
    (a,) = vs
    assume(abs(factor) > 1e-6)
    b = factor * a
    comb = SLERP.combine(gram64([a, b]), lam)
    assert comb.steps[0].fallback == "colinear"
    assert comb.weights == pytest.approx((1 - lam, lam))


@PROPS
@given(vectors(count=2), lams, st.sampled_from(["zero-second", "zero-first", "both-zero", "colinear", "opposite"]))
def test_degenerate_cases_stay_finite(vs: list[torch.Tensor], lam: float, case: str) -> None:
    a, b = vs
    if case == "zero-second":
        b = torch.zeros_like(a)
    elif case == "zero-first":
        a = torch.zeros_like(b)
    elif case == "both-zero":
        a, b = torch.zeros_like(a), torch.zeros_like(b)
    elif case == "colinear":
        b = 3.0 * a
    else:
        b = -a
    for method in (SLERP, LINEAR):
        comb = method.combine(gram64([a, b]), lam)
        assert all(math.isfinite(w) for w in comb.weights)
        assert torch.isfinite(merged([a, b], comb)).all()
    comb = SLERP.combine(gram64([a, b]), lam)
    if case.startswith(("zero", "both")):
        # A zero task vector contributes nothing; the other keeps its linear weight.
        assert comb.steps[0].fallback == "zero" and comb.steps[0].angle_deg is None
        torch.testing.assert_close(merged([a, b], comb), (1 - lam) * a + lam * b)


@PROPS
@given(st.integers(min_value=3, max_value=5).flatmap(lambda m: vectors(count=m)), st.none() | lams)
def test_iterative_merge_of_m_members(vs: list[torch.Tensor], lam: float | None) -> None:
    m = len(vs)
    comb = SLERP.combine(gram64(vs), lam)
    lambdas = step_lambdas(m, lam)
    assert lambdas[-1] == (1 / m if lam is None else lam) and lambdas[:-1] == [1 / k for k in range(2, m)]
    running = vs[0]
    for k in range(1, m):
        c = float(running @ vs[k] / (running.norm() * vs[k].norm()))
        assume(abs(c) < COLINEAR_COS)
        running = direct_slerp(running, vs[k], lambdas[k - 1])
    torch.testing.assert_close(merged(vs, comb), running, rtol=1e-8, atol=1e-10 * float(sum(v.norm() for v in vs)))
    assert [s.member for s in comb.steps] == list(range(1, m))


@PROPS
@given(st.integers(min_value=2, max_value=5).flatmap(lambda m: vectors(dim=32, count=m)))
def test_mutually_orthogonal_equal_norms_keep_their_norm(vs: list[torch.Tensor]) -> None:
    q, _ = torch.linalg.qr(torch.stack(vs).T)  # orthonormal columns
    basis = [q[:, i] * 2.5 for i in range(len(vs))]
    out = merged(basis, SLERP.combine(gram64(basis), None))
    assert float(out.norm()) == pytest.approx(2.5, rel=1e-9)


@PROPS
@given(vectors(count=3), lams)
def test_reference_slerp_on_tensors(vs: list[torch.Tensor], lam: float) -> None:
    init, m1, m2 = vs
    d1, d2 = m1 - init, m2 - init
    assume(abs(float(d1 @ d2 / (d1.norm() * d2.norm()))) < COLINEAR_COS)
    torch.testing.assert_close(slerp(init, [m1, m2], lam), init + direct_slerp(d1, d2, lam))


DTYPES = st.sampled_from([torch.bfloat16, torch.float16, torch.float32])


@PROPS
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=1, max_value=64),
       st.integers(min_value=1, max_value=4), DTYPES, st.integers(min_value=0, max_value=2**31 - 1))
def test_chunked_gram_matches_float64(n: int, chunk: int, m: int, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    init = torch.randn(n, generator=gen).to(dtype)
    members = [(init.float() + 0.1 * torch.randn(n, generator=gen)).to(dtype) for _ in range(m)]
    got = gram_of([init, *members], Scratch(m, chunk))
    deltas = torch.stack([x.double() - init.double() for x in members])
    want = deltas @ deltas.T
    assert got.dtype == torch.float64
    # Errors matter relative to the norms (they move the angles): |ΔG_ij| against ‖δ_i‖‖δ_j‖.
    scale = torch.sqrt(torch.outer(want.diagonal(), want.diagonal()))
    assert bool(((got - want).abs() <= 1e-6 * scale + 1e-12).all())
    assert torch.equal(got, got.T)


@PROPS
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=1, max_value=64), DTYPES,
       st.lists(st.floats(min_value=-2, max_value=2), min_size=2, max_size=2), st.integers(0, 2**31 - 1))
def test_chunked_combination_matches_formula(n: int, chunk: int, dtype: torch.dtype, w: list[float], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    init, a, b = (torch.randn(n, generator=gen).to(dtype) for _ in range(3))
    comb = Combination(weights=(w[0], w[1]), steps=())
    out = torch.empty(n, dtype=dtype)
    combine_into(out, [init, a, b], comb, Scratch(2, chunk))
    want = init.double() + w[0] * (a.double() - init.double()) + w[1] * (b.double() - init.double())
    # One rounding into the output dtype, after float32 arithmetic.
    torch.testing.assert_close(out.double(), want.to(dtype).double(), rtol=2 ** -7 if dtype != torch.float32 else 1e-5,
                               atol=1e-5)


@PROPS
@given(st.integers(min_value=1, max_value=200), DTYPES, st.floats(min_value=0.0, max_value=1.0),
       st.integers(0, 2**31 - 1))
def test_liti_endpoints_are_copies_and_interior_is_the_formula(n: int, dtype: torch.dtype, eta: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    init, m = (torch.randn(n, generator=gen).to(dtype) for _ in range(2))
    assert torch.equal(bits(liti(init, m, 0.0)), bits(init))
    assert torch.equal(bits(liti(init, m, 1.0)), bits(m))
    want = ((1 - eta) * init.double() + eta * m.double()).to(dtype)
    torch.testing.assert_close(liti(init, m, eta), want, rtol=2 ** -7, atol=1e-6)


def test_liti_rejects_eta_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="eta"):
        liti(torch.zeros(2), torch.ones(2), 1.5)


def test_single_member_is_returned_as_is() -> None:
    assert SLERP.combine([[4.0]], None) == Combination(weights=(1.0,), steps=())
