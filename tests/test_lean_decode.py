"""The lean decode forward (kwarp/policy/lean_decode.py) gives model.forward's logits, so the loop samples the same distribution.

Tolerance: float32 logits allclose within atol 1e-5, rtol 1e-5 (the lean attention reduces in another
order than SDPA's kernel; positions off by one move these tiny models' logits by over 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from kwarp.policy import generation, lean_decode, load_causal_lm, load_tokenizer, sample
from kwarp.policy.logprobs import position_ids
from tests.models import tiny_gpt2, tiny_llama

PROMPTS = ["a longer prompt here", "hi", "mid size"]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_lean_decode_logits_equal_model_forward_with_left_padding(tmp_path: Path, builder, group: int) -> None:
    folder = builder(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    assert lean_decode.supports(model)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    assert prompt_mask[:, 0].eq(0).any()  # left padding present
    rows, new = len(PROMPTS) * group, 7
    # The whole sequence (each prompt `group` times, then arbitrary continuation tokens) in one forward.
    torch.manual_seed(0)
    continuation = torch.randint(4, model.config.vocab_size, (rows, new))
    full_mask = torch.cat([prompt_mask.repeat_interleave(group, 0), torch.ones_like(continuation)], dim=1)
    full_ids = torch.cat([prompt_ids.repeat_interleave(group, 0), continuation], dim=1)
    with torch.no_grad():
        expected = model(input_ids=full_ids, attention_mask=full_mask, position_ids=position_ids(full_mask)).logits
        # The lean path: each prompt's pass once (as the decode loop runs it), then one token per step.
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), cache=cache,
              use_cache=True)
        lean = lean_decode.LeanDecoder(model, cache, prompt_mask.repeat_interleave(group, 0), new, group=group)
        position = position_ids(prompt_mask).repeat_interleave(group, 0)[:, -1:] + 1
        p = prompt_ids.shape[1]
        for t in range(new):
            logits = lean.step(continuation[:, t], position)
            torch.testing.assert_close(logits, expected[:, p + t], atol=1e-5, rtol=1e-5)
            position = position + 1
    # The comparison has power: positions shifted by one move the logits ten times the tolerance or more.
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), cache=cache,
              use_cache=True)
        wrong = lean_decode.LeanDecoder(model, cache, prompt_mask.repeat_interleave(group, 0), new, group=group)
        shifted = wrong.step(continuation[:, 0], position_ids(prompt_mask).repeat_interleave(group, 0)[:, -1:] + 2)
    assert (shifted - expected[:, p]).abs().max() > 1e-4


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_the_cpu_decode_loop_takes_the_lean_forward(tmp_path: Path, builder, monkeypatch: pytest.MonkeyPatch) -> None:
    """generation auto on a CPU: the decode steps run LeanDecoder.step, not model(...), after the prompt pass."""
    folder = builder(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    forwards: list[int] = []
    steps: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: forwards.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    real_step = lean_decode.LeanDecoder.step
    monkeypatch.setattr(lean_decode.LeanDecoder, "step",
                        lambda self, token, position: steps.append(token.shape[0]) or real_step(self, token, position))
    try:
        torch.manual_seed(0)
        drawn = sample(model, tok, PROMPTS, samples_per_prompt=2, max_new_tokens=5, temperature=0.9, generation="auto")
    finally:
        hook.remove()
    assert forwards == [len(PROMPTS)]  # the prompt pass only, each prompt once
    assert steps and set(steps) == {len(PROMPTS) * 2}
    assert drawn.completion_ids.shape[0] == len(PROMPTS) * 2


def test_models_the_lean_forward_does_not_cover_keep_transformers_forward(tmp_path: Path) -> None:
    model = load_causal_lm(tiny_gpt2(tmp_path / "m"), "float32")
    assert lean_decode.supports(model)
    assert not lean_decode.supports(model.train())  # dropout would be on: transformers' forward applies it
    model.eval()
    # A hook on a module the lean forward calls still runs; one on a block it bypasses would not: fall back.
    head_hook = model.lm_head.register_forward_hook(lambda _m, _i, out: out)
    assert lean_decode.supports(model)
    block_hook = model.transformer.h[0].register_forward_hook(lambda _m, _i, out: out)
    assert not lean_decode.supports(model)
    block_hook.remove()
    head_hook.remove()
    model.config.add_cross_attention = True
    assert not lean_decode.supports(model)
    assert generation.resolve("auto", torch.device("cpu")) == "eager"


def _lean_logits(model, tok, hooks: bool) -> tuple[list[torch.Tensor], set[int]]:
    """Logits of 5 lean decode steps; with `hooks`, a pre-hook on every module the lean forward calls,
    and the ids of the modules whose hook ran during the steps."""
    ran: set[int] = set()
    handles = []
    if hooks:
        called = lean_decode._called(model)
        for module in model.modules():
            if id(module) in called:
                handles.append(module.register_forward_pre_hook(lambda m, _a: ran.add(id(m))))
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    torch.manual_seed(0)
    tokens = torch.randint(4, model.config.vocab_size, (len(PROMPTS), 5))
    try:
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                  cache=cache, use_cache=True)
            ran.clear()  # the prompt pass is transformers' forward: the lean steps only
            lean = lean_decode.LeanDecoder(model, cache, prompt_mask, 5)
            position = position_ids(prompt_mask)[:, -1:] + 1
            out = [lean.step(tokens[:, t], position + t) for t in range(5)]
    finally:
        for handle in handles:
            handle.remove()
    return out, ran


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_modules_called_directly_give_the_module_calls_logits_bit_for_bit(tmp_path: Path, builder) -> None:
    """Modules without hooks are called through their forward's functional call (lean_decode._direct); a
    module with a hook is called as a module, so its hook runs; the logits are the same either way."""
    folder = builder(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    direct, _ = _lean_logits(model, tok, hooks=False)
    through_modules, ran = _lean_logits(model, tok, hooks=True)
    assert ran == lean_decode._called(model)  # every hooked module ran in the lean steps
    for a, b in zip(direct, through_modules, strict=True):
        assert torch.equal(a, b)


def test_residual_sums_into_a_direct_calls_output_and_never_into_a_modules() -> None:
    """lean_decode._residual writes projection(x) + hidden into a direct call's fresh output, but leaves a
    module's output alone: a hook of the module may hold it (here one does, and must see the projection)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 4)
    x, hidden = torch.randn(3, 4), torch.randn(3, 4)
    expected = linear(x) + hidden
    held = []
    handle = linear.register_forward_hook(lambda _m, _i, out: held.append(out))
    try:
        assert torch.equal(lean_decode._residual(linear, x, hidden), expected)
    finally:
        handle.remove()
    assert torch.equal(held[0], linear(x))  # the hook's tensor is the projection, not the sum
    direct = lean_decode._direct(linear)
    assert not isinstance(direct, torch.nn.Module)
    assert torch.equal(lean_decode._residual(direct, x, hidden), expected)
    # With grad, the sum in place keeps the gradients of the fresh sum.
    w = linear.weight.detach().clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    lean_decode._residual(lambda t: t @ w.T, x, h).square().sum().backward()
    w0, h0 = linear.weight.detach().clone().requires_grad_(), hidden.clone().requires_grad_()
    (x @ w0.T + h0).square().sum().backward()
    assert torch.equal(w.grad, w0.grad) and torch.equal(h.grad, h0.grad)
