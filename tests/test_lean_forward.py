"""The lean forward over shared prompts (kwarp/policy/lean_forward.py) gives model.forward's logits and the
two-forward path's gradients, so the update and the reference passes compute what they computed.

Tolerance: float32 logits within atol 1e-5, rtol 1e-5, as for the lean decode step (the attention
reduces in another order than transformers' SDPA call; positions off by one move these tiny models'
logits by over 1e-4); gradients within atol 1e-5, rtol 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kwarp.policy import lean_forward, load_causal_lm, load_tokenizer
from kwarp.policy.logprobs import _completion_logits, position_ids, sequence_logprobs
from tests.models import tiny_gpt2, tiny_llama

PROMPTS = ["a longer prompt here", "hi", "mid size"]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _batch(tok, group: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts, each repeated for its group, and random completions (full mask, as Samples has)."""
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert enc["attention_mask"][:, 0].eq(0).any()  # left padding present
    rows = len(PROMPTS) * group
    completions = torch.randint(4, 128, (rows, width), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([enc["input_ids"].repeat_interleave(group, 0), completions], dim=1)
    mask = torch.cat([enc["attention_mask"].repeat_interleave(group, 0), torch.ones_like(completions)], dim=1)
    return ids, mask


@pytest.mark.parametrize("width", [1, 2, 7])
@pytest.mark.parametrize("group", [2, 4])
def test_lean_forward_logits_equal_model_forward_with_left_padding(tmp_path: Path, group: int, width: int) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    ids, mask = _batch(tok, group, width)
    assert lean_forward.supports(model, ids)
    prompt = ids.shape[1] - width
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        pieces = lean_forward.completion_logits(model, ids, mask, position_ids(mask), width, group)
    lean = torch.cat(pieces, dim=1)
    assert lean.shape == (ids.shape[0], width, 128)
    torch.testing.assert_close(lean, expected[:, prompt - 1 : -1], atol=1e-5, rtol=1e-5)
    # The comparison has power: positions shifted by one move the logits ten times the tolerance or more.
    with torch.no_grad():
        shifted = torch.cat(lean_forward.completion_logits(model, ids, mask, position_ids(mask) + 1, width, group), 1)
    assert (shifted - expected[:, prompt - 1 : -1]).abs().max() > 1e-4


def _grads(model, ids, mask, width: int, group: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = sequence_logprobs(model, ids, mask, torch.ones_like(ids[:, -width:]), temperature=0.7,
                            samples_per_prompt=group)
    # A loss whose gradient reaches each row differently, as the REINFORCE loss does.
    weights = torch.linspace(-1.0, 1.0, ids.shape[0])
    (out.logprob * weights).sum().backward()
    return out.logprob.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_update_takes_the_lean_forward_with_the_two_forward_paths_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    ids, mask = _batch(tok, 2, 6, seed=1)
    calls: list[int] = []
    real = lean_forward.completion_logits
    monkeypatch.setattr(lean_forward, "completion_logits", lambda *a: calls.append(1) or real(*a))
    lean_logp, lean_grads = _grads(model, ids, mask, 6, 2)
    assert calls == [1]
    monkeypatch.setattr(lean_forward, "supports", lambda model, ids: False)  # transformers' two forwards
    logp, grads = _grads(model, ids, mask, 6, 2)
    assert calls == [1]
    torch.testing.assert_close(lean_logp, logp, atol=1e-5, rtol=1e-5)
    assert lean_grads.keys() == grads.keys() and len(grads) == len(list(model.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_models_and_inputs_the_lean_forward_does_not_cover_keep_transformers_forward(tmp_path: Path) -> None:
    gpt2 = load_causal_lm(tiny_gpt2(tmp_path / "g"), "float32")
    llama = load_causal_lm(tiny_llama(tmp_path / "l"), "float32")
    ids = torch.ones(2, 4, dtype=torch.long)
    assert lean_forward.supports(gpt2, ids)
    assert not lean_forward.supports(llama, ids)
    assert not lean_forward.supports(gpt2.train(), ids)  # dropout on
    gpt2.eval()
    wrapped = torch.nn.Module()
    wrapped.module = gpt2  # as DDP holds it: its forward must run
    assert not lean_forward.supports(wrapped, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lean_forward.supports(gpt2, ids)
    hook = gpt2.transformer.h[0].register_forward_hook(lambda _m, _i, out: out)  # a block it bypasses
    assert not lean_forward.supports(gpt2, ids)
    hook.remove()
    hook = gpt2.register_forward_pre_hook(lambda _m, _a: None)  # the model's own forward, watched
    assert not lean_forward.supports(gpt2, ids)
    hook.remove()
    assert lean_forward.supports(gpt2, ids)


def test_rows_that_do_not_share_their_prompt_keep_one_forward_per_row(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "m")
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    ids, mask = _batch(tok, 2, 3)
    ids[1, -4] = 5 if ids[1, -4] != 5 else 6  # row 1's prompt now differs from row 0's
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        got = torch.cat(_completion_logits(model, ids, mask, 3, 2), dim=1)
    torch.testing.assert_close(got, expected[:, -4:-1], atol=1e-5, rtol=1e-5)

