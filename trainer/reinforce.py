"""The pure pieces of one WARP member's update (docs/method.md, stage 1). No I/O, no models.

Shapes: a batch holds n prompts × k samples, flattened prompt-major (row r is prompt r // k).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def shaped_reward(
    reward: torch.Tensor, logp_policy: torch.Tensor, logp_anchor: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """r_β(x, y) = r(x, y) − β·[log π_θ(y|x) − log π_anchor(y|x)], sequence level, no gradient.

    `logp_anchor=None` (anchor "none") drops the KL term.
    """
    if logp_anchor is None or beta == 0.0:
        return reward.detach().float()
    return (reward - beta * (logp_policy - logp_anchor)).detach().float()


def leave_one_out_advantage(rewards: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """A_i = r_i − mean_{j≠i} r_j over the k samples of each prompt (RLOO; unbiased, needs k ≥ 2)."""
    k = samples_per_prompt
    if k < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 samples per prompt")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {k} samples per prompt")
    grouped = rewards.reshape(-1, k)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - others_mean).reshape(-1)


def advantages(rewards: torch.Tensor, samples_per_prompt: int, baseline: str) -> torch.Tensor:
    """The REINFORCE weight of each sample: r_β itself (baseline "none") or its leave-one-out advantage."""
    if baseline == "leave-one-out":
        return leave_one_out_advantage(rewards, samples_per_prompt)
    if baseline == "none":
        return rewards.clone()
    raise ValueError(f"unknown baseline '{baseline}'; use leave-one-out or none")


def reinforce_loss(logp: torch.Tensor, advantage: torch.Tensor, normaliser: int) -> torch.Tensor:
    """−Σ A·log π_θ(y|x) / normaliser, A held constant.

    The normaliser is the number of samples of the whole step, so summing the losses of the
    micro-batches (gradient accumulation) gives exactly −mean(A·log π) over the batch.
    """
    return -(advantage.detach() * logp).sum() / normaliser


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of 0-based optimiser step `step`: linear warm-up over `warmup_steps`, then constant.

    Step 0 uses base_lr / warmup_steps, step warmup_steps − 1 the full base_lr.
    """
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


@torch.no_grad()
def ema_update_(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], rate: float) -> None:
    """θ_ema ← (1 − μ)·θ_ema + μ·θ, in place, in the EMA's own dtype (float32), one fused op per list.

    The policy may be bf16: its values are upcast first. A bf16 EMA would not move at μ = 0.01
    (the change is below half a bf16 ulp of the weight), which is why the EMA is float32.
    """
    if not ema:
        return
    sources = [p.detach() if p.dtype == e.dtype else p.detach().to(e.dtype) for e, p in zip(ema, params, strict=True)]
    torch._foreach_lerp_(list(ema), sources, rate)


def prompt_order(n_prompts: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the prompt set used in `epoch` by the member with `seed` (a pure function)."""
    digest = hashlib.sha256(f"kwarp-prompt-order:{seed}:{epoch}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randperm(n_prompts, generator=gen)


def batch_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Prompt indices of 0-based step `step`: positions step·B … step·B + B − 1 of the endless stream
    that concatenates one seeded permutation per epoch. The data position is a function of the step,
    so a resumed run reads exactly the prompts the uninterrupted run would have read.
    """
    start = step * batch_size
    out: list[int] = []
    order: torch.Tensor | None = None
    order_epoch = -1
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, n_prompts)
        if epoch != order_epoch:
            order, order_epoch = prompt_order(n_prompts, seed, epoch), epoch
        assert order is not None
        out.append(int(order[offset]))
    return out


def step_seed(seed: int, step: int, process: int) -> int:
    """The torch seed of (member seed, 0-based step, process index). Re-seeding every step from it
    makes the sampling noise of a step a function of saved progress, so a resumed run draws exactly
    the completions the uninterrupted run drew, and each process of a multi-GPU run draws its own.
    """
    digest = hashlib.sha256(f"kwarp-step:{seed}:{step}:{process}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds must fit in a signed 64-bit int
