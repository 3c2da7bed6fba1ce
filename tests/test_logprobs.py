"""The update's log-probs with each prompt run once per group of samples equal the straightforward ones.

`sequence_logprobs(..., samples_per_prompt=k)` runs a prompt shared by k rows through the model once
and the k completions on top of its repeated KV cache. The numbers it returns, and the gradients of
a REINFORCE loss on them, must be those of the textbook computation: one forward over every row's
prompt + completion and a log_softmax of every logit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kwarp.policy import batched_logprobs, load_causal_lm, load_tokenizer, sample, sequence_logprobs
from tests.models import tiny_gpt2, tiny_llama
from trainer.reinforce import advantages, reinforce_loss

K = 3
TEMPERATURE = 0.9


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _drawn(folder: Path):
    model, tok = load_causal_lm(folder, "float32"), load_tokenizer(folder)
    torch.manual_seed(0)
    drawn = sample(model, tok, ["a longer prompt here", "hi", "mid size"], samples_per_prompt=K, max_new_tokens=7,
                   temperature=TEMPERATURE, generation="auto")
    assert drawn.prompt_mask[:, 0].eq(0).any()  # left padding present
    assert drawn.lengths.min() > 0
    return model, drawn


def _textbook(model, drawn) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y|x) and the mean entropy the plain way: one full forward per row, log_softmax of every logit."""
    ids, mask, cmask = drawn.input_ids, drawn.attention_mask, drawn.completion_mask
    width = cmask.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = torch.log_softmax(logits[:, -(width + 1) : -1].float() / TEMPERATURE, dim=-1)
    token = logp.gather(-1, ids[:, -width:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    m = cmask.float()
    return (token * m).sum(1), ((entropy * m).sum(1) / m.sum(1)).detach()


def _loss_and_grads(model, drawn, group: int | None):
    """group None: the textbook computation above; else sequence_logprobs with that many samples per prompt."""
    model.zero_grad(set_to_none=True)
    if group is None:
        logprob, entropy = _textbook(model, drawn)
    else:
        out = sequence_logprobs(model, drawn.input_ids, drawn.attention_mask, drawn.completion_mask,
                                temperature=TEMPERATURE, with_entropy=True, samples_per_prompt=group)
        logprob, entropy = out.logprob, out.entropy
    rewards = torch.linspace(-1.0, 2.0, logprob.shape[0])
    loss = reinforce_loss(logprob, advantages(rewards, K, "leave-one-out"), normaliser=logprob.shape[0])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (logprob.detach(), entropy), loss.detach(), grads


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_each_prompt_once_gives_the_log_probs_loss_and_gradients_of_one_forward_per_row(tmp_path: Path, builder) -> None:
    model, drawn = _drawn(builder(tmp_path / "m"))
    (logp, entropy), loss, grads = _loss_and_grads(model, drawn, group=None)
    assert len(grads) == len(list(model.parameters()))
    for group in (1, K):  # one forward per row, and each prompt once per group
        (logp_g, entropy_g), loss_g, grads_g = _loss_and_grads(model, drawn, group=group)
        torch.testing.assert_close(logp_g, logp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy_g, entropy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss_g, loss, atol=1e-6, rtol=1e-5)
        assert grads_g.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grads_g[name], grad, atol=1e-6, rtol=1e-4, msg=f"{group}: {name}")
    # The reference passes: no grad (the logits overwritten in place), micro-batches of whole groups.
    with torch.no_grad():
        for group in (1, K):
            ref = batched_logprobs(model, drawn, temperature=TEMPERATURE, micro_batch=2 * K, samples_per_prompt=group,
                                   with_entropy=True)
            torch.testing.assert_close(ref.logprob, logp, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ref.entropy, entropy, atol=1e-5, rtol=1e-5)


def test_rows_that_do_not_share_their_prompt_are_run_one_forward_per_row(tmp_path: Path) -> None:
    model, drawn = _drawn(tiny_gpt2(tmp_path / "m"))
    rows = slice(1, -2)  # groups of K no longer line up with the prompts
    args = (drawn.input_ids[rows], drawn.attention_mask[rows], drawn.completion_mask[rows])
    with torch.no_grad():
        grouped = sequence_logprobs(model, *args, temperature=TEMPERATURE, samples_per_prompt=K)
        straight = sequence_logprobs(model, *args, temperature=TEMPERATURE)
    assert torch.equal(grouped.logprob, straight.logprob)



@pytest.mark.parametrize("temperature", [1.0, TEMPERATURE])
def test_the_update_log_probs_and_their_gradient_are_log_softmax_s(temperature: float) -> None:
    """With grad, _token_logprobs (one buffer, the gradient written into it in place) returns the
    textbook log_softmax's values, entropy and gradient, and only reads the caller's logits."""
    from kwarp.policy.logprobs import _token_logprobs

    torch.manual_seed(1)
    logits64 = (3 * torch.randn(3, 5, 11, dtype=torch.float64)).requires_grad_()
    targets64 = torch.randint(0, 11, (3, 5))
    assert torch.autograd.gradcheck(lambda x: _token_logprobs(x, targets64, temperature, False)[0], (logits64,))

    logits, targets, weights = 3 * torch.randn(4, 6, 50), torch.randint(0, 50, (4, 6)), torch.randn(4, 6)
    ours = logits.clone().requires_grad_()
    logp, entropy = _token_logprobs(ours, targets, temperature, with_entropy=True)
    (logp * weights).sum().backward()
    assert torch.equal(ours.detach(), logits)  # read, not overwritten

    textbook = logits.clone().requires_grad_()
    full = torch.log_softmax(textbook / temperature, dim=-1)
    expected = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.grad, textbook.grad, atol=1e-6, rtol=1e-5)
    assert not entropy.requires_grad

    # bfloat16 logits (autocast) get a bfloat16 gradient, that of the float32 computation rounded.
    half = logits.to(torch.bfloat16).requires_grad_()
    logp_half, _ = _token_logprobs(half, targets, temperature, with_entropy=False)
    (logp_half * weights).sum().backward()
    assert half.grad.dtype == torch.bfloat16
    widened = half.detach().float().requires_grad_()
    (_token_logprobs(widened, targets, temperature, False)[0] * weights).sum().backward()
    assert torch.equal(half.grad, widened.grad.to(torch.bfloat16))
