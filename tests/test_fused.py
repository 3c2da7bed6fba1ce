"""A model loaded by kwarp computes what the model as written computes, with its GELU fused (kwarp.fused)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.activations import GELUTanh, NewGELUActivation

from kwarp.fused import fuse_activations_
from kwarp.policy import load_causal_lm
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
    assert sum(isinstance(m, GELUTanh) for m in ours.modules()) == 3
    assert not any(isinstance(m, NewGELUActivation) for m in ours.modules())
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
