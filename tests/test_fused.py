"""A model loaded by kwarp computes what the model as written computes, with its GELU fused (kwarp.policy.fused),
and the fused GELU is the tanh-approximation GELU on every path it takes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.activations import GELUTanh, NewGELUActivation

from kwarp.policy import load_causal_lm
from kwarp.policy.fused import TanhGELU, fuse_activations_, tanh_gelu
from tests.models import tiny_gpt2, tiny_llama


def _logits_and_grads(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    (logits.float().sin().sum()).backward()  # a loss whose gradient reaches every logit differently
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gpt2_loads_with_the_fused_gelu_and_the_same_outputs_and_gradients(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m", n_layer=3)
    written = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert sum(isinstance(m, NewGELUActivation) for m in written.modules()) == 3
    ours = load_causal_lm(folder, "float32")
    assert sum(isinstance(m, TanhGELU) for m in ours.modules()) == 3
    assert not any(isinstance(m, NewGELUActivation | GELUTanh) for m in ours.modules())
    assert ours.config.activation_function == "gelu_new"  # what is saved does not change
    ids = torch.randint(4, 128, (3, 20), generator=torch.Generator().manual_seed(0))
    logits, grads = _logits_and_grads(written, ids)
    fused_logits, fused_grads = _logits_and_grads(ours, ids)
    torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("builder", [tiny_llama], ids=["llama"])
def test_models_without_a_python_gelu_are_left_alone(tmp_path: Path, builder) -> None:
    model = AutoModelForCausalLM.from_pretrained(builder(tmp_path / "m"), dtype=torch.float32)
    before = [type(m) for m in model.modules()]
    assert fuse_activations_(model) == 0
    assert [type(m) for m in model.modules()] == before


def _gelu_tanh_float64(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation as written (GPT-2's gelu_new), in float64."""
    x = x.double()
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


# Wide enough that sigmoid's tails matter: at |x| = 12 the gate is within 1e-30 of 0 or 1.
_X = torch.cat([torch.linspace(-12.0, 12.0, 4001), torch.randn(2000, generator=torch.Generator().manual_seed(0))])


def test_tanh_gelu_values_match_the_formula_and_torchs_kernel() -> None:
    expected = _gelu_tanh_float64(_X)
    kernel = torch.nn.functional.gelu(_X, approximate="tanh")
    with torch.no_grad():
        ours = tanh_gelu(_X)
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(ours, kernel, atol=2e-6, rtol=1e-6)
    # The path with grad computes the same values as the one without.
    torch.testing.assert_close(tanh_gelu(_X.clone().requires_grad_()).detach(), ours, atol=0.0, rtol=0.0)


def test_tanh_gelu_leaves_its_input_unchanged() -> None:
    x = _X.clone()
    with torch.no_grad():
        tanh_gelu(x)
    assert torch.equal(x, _X)


def test_tanh_gelu_gradient_matches_the_formulas_gradient() -> None:
    g = torch.randn(_X.shape, generator=torch.Generator().manual_seed(1))
    x64 = _X.double().requires_grad_()
    _gelu_tanh_float64(x64).backward(g.double())
    x = _X.clone().requires_grad_()
    tanh_gelu(x).backward(g)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-5, rtol=1e-5)
    kernel_x = _X.clone().requires_grad_()
    torch.nn.functional.gelu(kernel_x, approximate="tanh").backward(g)
    torch.testing.assert_close(x.grad, kernel_x.grad, atol=2e-5, rtol=1e-5)


def test_tanh_gelu_passes_gradcheck_in_float64() -> None:
    x = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).mul_(3).requires_grad_()
    assert torch.autograd.gradcheck(tanh_gelu, (x,))
    torch.testing.assert_close(tanh_gelu(x), _gelu_tanh_float64(x), atol=1e-12, rtol=1e-12)


def test_tanh_gelu_keeps_torchs_kernel_for_bfloat16() -> None:
    x = _X.bfloat16()
    assert torch.equal(tanh_gelu(x), torch.nn.functional.gelu(x, approximate="tanh"))


def test_models_with_torchs_tanh_kernel_get_the_same_module() -> None:
    model = torch.nn.Sequential(GELUTanh(), torch.nn.Linear(2, 2))
    assert fuse_activations_(model) == 1
    assert isinstance(model[0], TanhGELU)
