"""The pure pieces of a WARP member's update, against hand-computed values and a toy bandit."""

from __future__ import annotations

import pytest
import torch

from kwarp.trainer.reinforce import (
    advantages,
    batch_indices,
    ema_update_,
    leave_one_out_advantage,
    prompt_order,
    reinforce_loss,
    shaped_reward,
    step_seed,
    warmup_lr,
)


@pytest.mark.parametrize(
    ("rewards", "k", "expected"),
    [
        # Prompt 1: 1 − (2+3)/2, 2 − (1+3)/2, 3 − (1+2)/2; prompt 2: equal rewards carry no signal.
        ([1.0, 2.0, 3.0, 4.0, 4.0, 4.0], 3, [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]),
        ([1.0, 3.0, 0.5, -0.5], 2, [-2.0, 2.0, 1.0, -1.0]),
        ([0.0, 0.0, 0.0, 4.0], 4, [-4 / 3, -4 / 3, -4 / 3, 4.0]),
    ],
)
def test_leave_one_out_advantage_matches_hand_values(rewards: list[float], k: int, expected: list[float]) -> None:
    got = leave_one_out_advantage(torch.tensor(rewards), k)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_leave_one_out_sums_to_zero_per_prompt_and_rejects_bad_shapes() -> None:
    r = torch.randn(5 * 4, generator=torch.Generator().manual_seed(0))
    a = leave_one_out_advantage(r, 4).reshape(5, 4)
    torch.testing.assert_close(a.sum(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantage(r, 1)
    with pytest.raises(ValueError, match="groups of 3"):
        leave_one_out_advantage(r, 3)


def test_advantages_without_baseline_is_the_shaped_reward() -> None:
    r = torch.tensor([0.3, -1.0, 2.0])
    torch.testing.assert_close(advantages(r, 1, "none"), r)
    with pytest.raises(ValueError, match="unknown baseline"):
        advantages(r, 1, "mean")


def test_shaped_reward_subtracts_beta_times_log_ratio() -> None:
    r = torch.tensor([1.0, 0.5])
    logp = torch.tensor([-2.0, -3.0], requires_grad=True)
    anchor = torch.tensor([-2.5, -1.0])
    got = shaped_reward(r, logp, anchor, beta=0.1)
    # 1 − 0.1·(−2 + 2.5) = 0.95 and 0.5 − 0.1·(−3 + 1) = 0.7
    torch.testing.assert_close(got, torch.tensor([0.95, 0.7]))
    assert not got.requires_grad  # r_β is a constant of the policy gradient
    torch.testing.assert_close(shaped_reward(r, logp, None, beta=0.1), r)  # anchor "none"
    torch.testing.assert_close(shaped_reward(r, logp, anchor, beta=0.0), r)


def test_reinforce_loss_gradient_is_minus_advantage_over_batch() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5, -4.0], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5, 0.0])
    loss = reinforce_loss(logp, adv, normaliser=4)
    loss.backward()
    torch.testing.assert_close(loss, -(adv * logp).mean())
    torch.testing.assert_close(logp.grad, -adv / 4)


def test_micro_batches_accumulate_to_the_full_batch_gradient() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(8, 3)
    adv = torch.randn(8)
    reinforce_loss(x @ w, adv, normaliser=8).backward()
    full = w.grad.clone()
    w.grad = None
    for s in range(0, 8, 2):
        reinforce_loss(x[s : s + 2] @ w, adv[s : s + 2], normaliser=8).backward()
    torch.testing.assert_close(w.grad, full)


def test_warmup_is_linear_then_constant() -> None:
    assert [warmup_lr(s, 1e-2, 4) for s in range(6)] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
    assert warmup_lr(0, 3e-4, 0) == 3e-4


def test_ema_rate_one_copies_and_rate_zero_keeps() -> None:
    params = [torch.randn(4, 3), torch.randn(5)]
    ema = [torch.zeros(4, 3), torch.ones(5)]
    ema_update_(ema, params, 0.0)
    assert torch.equal(ema[0], torch.zeros(4, 3)) and torch.equal(ema[1], torch.ones(5))
    ema_update_(ema, params, 1.0)
    assert all(torch.equal(e, p) for e, p in zip(ema, params, strict=True))


def test_ema_matches_the_formula() -> None:
    theta = [torch.tensor([2.0, -1.0])]
    ema = [torch.tensor([0.0, 1.0])]
    ema_update_(ema, theta, 0.25)
    torch.testing.assert_close(ema[0], torch.tensor([0.5, 0.5]))  # 0.75·ema + 0.25·θ


def test_float32_ema_of_a_bf16_policy_moves_where_a_bf16_ema_would_not() -> None:
    policy = [torch.full((8,), 1.25, dtype=torch.bfloat16)]
    ema32 = [torch.ones(8, dtype=torch.float32)]
    ema16 = [torch.ones(8, dtype=torch.bfloat16)]
    for _ in range(10):
        ema_update_(ema32, policy, 0.01)
        ema_update_(ema16, policy, 0.01)
    assert ema32[0].dtype == torch.float32
    # Each bf16 step adds 0.0025, under half a bf16 ulp at 1.0 (2⁻⁸): it rounds back to 1.0 forever.
    assert torch.equal(ema16[0], torch.ones(8, dtype=torch.bfloat16))
    torch.testing.assert_close(ema32[0], torch.full((8,), 1 + 0.25 * (1 - 0.99**10)), rtol=0, atol=1e-6)


def test_batch_indices_read_each_prompt_once_per_epoch_in_a_seeded_order() -> None:
    n, b = 10, 4
    stream = [i for step in range(5) for i in batch_indices(n, b, step, seed=7)]  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] == prompt_order(n, 7, 0).tolist() and stream[10:] == prompt_order(n, 7, 1).tolist()
    assert stream[:10] != stream[10:]  # a new permutation every epoch
    assert batch_indices(n, b, 3, seed=7) == stream[12:16]  # a function of the step alone: resumable
    assert batch_indices(n, b, 0, seed=8) != batch_indices(n, b, 0, seed=7)  # members differ by seed


def test_step_seeds_differ_by_step_and_process_and_fit_torch() -> None:
    seeds = {step_seed(3, s, p) for s in range(50) for p in range(4)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)
    torch.manual_seed(max(seeds))


@pytest.mark.parametrize("baseline", ["leave-one-out", "none"])
def test_reinforce_moves_probability_to_the_better_arm(baseline: str) -> None:
    """A two-armed bandit: arm 1 pays 1, arm 0 pays 0.2, both with noise; π starts uniform."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    k, prompts = 4, 8
    for _ in range(60):
        probs = torch.softmax(logits, dim=0)
        arms = torch.multinomial(probs.detach(), prompts * k, replacement=True, generator=gen)
        rewards = torch.where(arms == 1, 1.0, 0.2) + 0.1 * torch.randn(prompts * k, generator=gen)
        logp = torch.log_softmax(logits, dim=0)[arms]
        loss = reinforce_loss(logp, advantages(shaped_reward(rewards, logp, None, 0.0), k, baseline), prompts * k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(logits, dim=0)[1] > 0.9
