"""One REINFORCE step of a WARP member (steps 2-5 of trainer/train.py's docstring): sample, score,
reference log-probs, the update, the EMA; and the step's metrics.

benchmarks/train_step.py times this same step, phase by phase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from kwarp.core.spec import WarpRunSpec
from kwarp.policy import Reward, Samples, batched_logprobs, decode_completions, sample, sequence_logprobs

from . import sharding
from .guards import NONFINITE_FIELD, finite_or_none
from .models import Models
from .reinforce import advantages, ema_update_, reinforce_loss, shaped_reward, warmup_lr


@dataclass(frozen=True)
class StepConfig:
    samples_per_prompt: int
    micro_batch_prompts: int
    max_new_tokens: int
    max_prompt_tokens: int
    temperature: float
    beta: float
    baseline: str
    ema_rate: float
    learning_rate: float
    warmup_steps: int
    max_grad_norm: float | None
    generation: str = "auto"
    # Run each prompt once per group of its k samples (kwarp.policy._completion_logits). False only in
    # benchmarks/train_step.py's baseline, the trainer before issue 16.
    shared_prompts: bool = True

    @classmethod
    def from_spec(cls, spec: WarpRunSpec, prompts_per_process: int) -> StepConfig:
        tr = spec.training
        return cls(
            samples_per_prompt=tr.samples_per_prompt,
            micro_batch_prompts=min(tr.micro_batch_size or prompts_per_process, prompts_per_process),
            max_new_tokens=tr.max_new_tokens,
            max_prompt_tokens=tr.max_prompt_tokens,
            temperature=tr.temperature,
            beta=spec.warp.beta,
            baseline=tr.baseline,
            ema_rate=spec.warp.ema_rate,
            learning_rate=tr.learning_rate,
            warmup_steps=tr.warmup_steps,
            max_grad_norm=tr.max_grad_norm,
            generation=tr.generation,
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Time per phase of a step (device work is waited for, so the split is honest).

    The clock is wall time; a benchmark on a shared CPU may pass time.process_time, which other
    processes' load does not inflate.
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _sync(self.device)
        start = self.clock()
        yield
        _sync(self.device)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + self.clock() - start


def training_step(
    models: Models,
    reward: Reward,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    prompts: list[str],
    step: int,
    cfg: StepConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """One REINFORCE step on this process's prompts; returns the step's metrics (all processes).

    `clock` times the phases (record["timing"]); step_seconds is always wall time.
    """
    timer = PhaseTimer(accelerator.device, clock)
    t0 = time.perf_counter()
    samples, rewards = rollout(models, reward, accelerator, prompts, cfg, timer)
    return learn(models, samples, rewards, optimizer, accelerator, step, cfg, timer=timer, started=t0)


def rollout(
    models: Models, reward: Reward, accelerator: Any, prompts: list[str], cfg: StepConfig, timer: PhaseTimer
) -> tuple[Samples, torch.Tensor]:
    """Steps 2-3a: k completions per prompt from π_θ and their rewards."""
    k = cfg.samples_per_prompt
    with timer("generate"), accelerator.autocast():
        samples: Samples = sample(
            models.bare,
            models.tokenizer,
            prompts,
            samples_per_prompt=k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            max_prompt_tokens=cfg.max_prompt_tokens,
            generation=cfg.generation,
            # Sharded: every forward is a collective, so every process generates until all are done.
            synced=models.sharded,
        )
    with timer("score"):
        texts = decode_completions(models.tokenizer, samples)
        rewards = reward.score([p for p in prompts for _ in range(k)], texts).to(accelerator.device)
    return samples, rewards


def _reference_logprobs(model: Any, samples: Samples, cfg: StepConfig, rows: int, group: int) -> torch.Tensor:
    return batched_logprobs(
        model, samples, temperature=cfg.temperature, micro_batch=rows, samples_per_prompt=group
    ).logprob


def learn(
    models: Models,
    samples: Samples,
    rewards: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    step: int,
    cfg: StepConfig,
    *,
    timer: PhaseTimer | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Steps 3b-5 on this process's rows of the batch: reference log-probs, the update, the EMA; the metrics."""
    device = accelerator.device
    k = cfg.samples_per_prompt
    timer = timer or PhaseTimer(device)
    t0 = started if started is not None else time.perf_counter()
    n = samples.completion_ids.shape[0]
    rows = cfg.micro_batch_prompts * k

    # Each prompt's k samples share it: every pass runs the prompt once per group, not k times
    # (kwarp.policy._completion_logits). Sharded models keep one forward per pass: FSDP gathers and
    # frees each block around a forward, and its backward is only tested on one forward per micro-batch.
    group = k if cfg.shared_prompts and not models.sharded else 1
    with timer("reference"), accelerator.autocast():
        logp_anchor = logp_init = None
        if models.anchor is not None:
            logp_anchor = _reference_logprobs(models.anchor, samples, cfg, rows, group)
        if models.init is models.anchor:
            logp_init = logp_anchor
        elif models.init is not None:
            logp_init = _reference_logprobs(models.init, samples, cfg, rows, group)
        if models.sharded:
            for frozen in (models.anchor, models.init):
                sharding.reshard(frozen)

    with timer("train"):
        logps, entropies, loss_total = [], [], 0.0
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            chunk = samples.rows(start, stop)
            # DDP all-reduces gradients once, on the last micro-batch; FSDP reduce-scatters each one
            # into the sharded gradients (holding whole gradients until the last would defeat sharding).
            sync = nullcontext() if stop == n or models.sharded else accelerator.no_sync(models.policy)
            with sync:
                with accelerator.autocast():
                    out = sequence_logprobs(
                        models.policy,
                        chunk.input_ids,
                        chunk.attention_mask,
                        chunk.completion_mask,
                        temperature=cfg.temperature,
                        # kwarp's decode loop measured the entropy while sampling: no second softmax here.
                        with_entropy=chunk.entropy is None,
                        samples_per_prompt=group,
                    )
                anchor_chunk = logp_anchor[start:stop] if logp_anchor is not None else None
                r_beta = shaped_reward(rewards[start:stop], out.logprob.detach(), anchor_chunk, cfg.beta)
                loss = reinforce_loss(out.logprob, advantages(r_beta, k, cfg.baseline), normaliser=n)
                accelerator.backward(loss)
            logps.append(out.logprob.detach())
            entropies.append(out.entropy if chunk.entropy is None else chunk.entropy)
            loss_total += float(loss.detach())
        max_norm = cfg.max_grad_norm or float("inf")
        if models.sharded:
            grad_norm = sharding.clip_grad_norm_(models.params, max_norm)
        else:
            grad_norm = accelerator.clip_grad_norm_(models.params, max_norm)
        lr = warmup_lr(step, cfg.learning_rate, cfg.warmup_steps)
        # The non-finite guard (trainer/guards.py): a nan/inf loss or gradient skips the update.
        # Gradients are all-reduced, so the norm agrees across processes; the loss is local, so the
        # processes agree on the verdict before any of them steps.
        finite = bool(torch.isfinite(grad_norm)) and math.isfinite(loss_total)
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(torch.tensor(float(not finite), device=device), reduction="sum")
            finite = float(bad) == 0.0
        if finite:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with timer("ema"):
        if finite:
            ema_update_(models.ema, [sharding.local(p) for p in models.params], cfg.ema_rate)

    logp = torch.cat(logps).float()
    entropy = torch.cat(entropies).float()  # type: ignore[arg-type]
    zero = torch.zeros((), device=device)
    sums = torch.stack(
        [
            rewards.sum(),
            (rewards**2).sum(),
            torch.tensor(float(n), device=device),
            (logp - logp_anchor.float()).sum() if logp_anchor is not None else zero,
            (logp - logp_init.float()).sum() if logp_init is not None else zero,
            samples.lengths.sum().float(),
            entropy.sum(),
            torch.tensor(loss_total, device=device),
        ]
    )
    sums = accelerator.reduce(sums, reduction="sum").cpu().double()
    total = float(sums[2])
    mean_reward = float(sums[0]) / total
    seconds = time.perf_counter() - t0
    record = {
        "reward": mean_reward,
        "reward_std": max(float(sums[1]) / total - mean_reward**2, 0.0) ** 0.5,
        "kl_anchor": float(sums[3]) / total if logp_anchor is not None else None,
        "kl_init": float(sums[4]) / total if logp_init is not None else None,
        "completion_tokens": float(sums[5]) / total,
        "entropy": float(sums[6]) / total,
        "loss": float(sums[7]) / accelerator.num_processes,
        "grad_norm": float(grad_norm),
        "lr": lr,
        "step_seconds": seconds,
        "tokens_per_second": float(sums[5]) / seconds,
        "timing": timer.seconds,
    }
    return record if finite else {**finite_or_none(record), NONFINITE_FIELD: True}
