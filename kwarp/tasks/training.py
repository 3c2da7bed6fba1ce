"""Training the demo task's two models on a CPU: the SFT policy and the reward model.

- The policy is a small GPT-2 trained with next-token cross-entropy on the SFT reviews
  ("<bos> review <eos>").
- The reward model is a GPT2ForSequenceClassification (one output) whose transformer starts from
  the SFT policy's, as reward models usually start from the SFT model, trained with the
  Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)) on the preference pairs. Its output is
  then rescaled so that rewards of SFT texts have unit standard deviation: the paper's beta = 0.1
  then weighs KL against reward as intended.

Dropout is off in both models, so log-probabilities and rewards do not depend on train/eval mode.
A small share of training sequences has no <bos>, so both models also behave when a caller encodes
with add_special_tokens=False.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from kwarp.tasks.corpus import Pair

P_NO_BOS = 0.1
# Batches are cut from a pool this many batches large, sorted by length, so little is padding.
BUCKET_BATCHES = 16
WARMUP_FRACTION = 0.05
FINAL_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0

OnStep = Callable[[int, float], None]


def policy_config(
    tokenizer: PreTrainedTokenizerFast, *, n_layer: int, n_embd: int, n_head: int, n_positions: int
) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def generation_config(tokenizer: PreTrainedTokenizerFast, max_new_tokens: int) -> GenerationConfig:
    """Plain ancestral sampling by default. transformers applies top_k = 50 when top_k is unset;
    RL needs the untruncated distribution (its log-probs are the policy's), so top_k = 0 and top_p = 1."""
    return GenerationConfig(
        do_sample=True,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _lr_lambda(steps: int) -> Callable[[int], float]:
    warmup = max(1, int(WARMUP_FRACTION * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _optimizer(
    model: torch.nn.Module, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.98))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))


def _update(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
            loss: torch.Tensor) -> float:  # fmt: skip
    """One optimiser step down `loss`, its gradient clipped to MAX_GRAD_NORM; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    opt.step()
    sched.step()
    return loss.item()


def _encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], *, eos: bool) -> list[list[int]]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos, end = [tokenizer.bos_token_id], [tokenizer.eos_token_id] if eos else []
    limit = tokenizer.model_max_length
    return [(bos + seq + end)[:limit] for seq in ids]


def _drop_bos(seqs: list[list[int]], gen: torch.Generator) -> list[list[int]]:
    drop = torch.rand(len(seqs), generator=gen) < P_NO_BOS
    return [s[1:] if d and len(s) > 1 else s for s, d in zip(seqs, drop.tolist(), strict=True)]


def _batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless random batches of indices whose sequences have similar lengths (less padding, same data)."""
    while True:
        pool = torch.randint(len(lengths), (batch_size * BUCKET_BATCHES,), generator=gen).tolist()
        pool.sort(key=lambda i: lengths[i])
        chunks = [pool[k : k + batch_size] for k in range(0, len(pool), batch_size)]
        for c in torch.randperm(len(chunks), generator=gen).tolist():
            yield chunks[c]


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def train_sft(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_step: OnStep | None = None,
) -> list[float]:
    """Causal-LM training on "<bos> text <eos>"; returns the loss of every step."""
    gen = torch.Generator().manual_seed(seed)
    data = _encode(tokenizer, texts, eos=True)
    opt, sched = _optimizer(model, lr, steps)
    batches = _batches([len(s) for s in data], batch_size, gen)
    model.train()
    losses = []
    for step in range(steps):
        idx = next(batches)
        ids, mask = _right_pad(_drop_bos([data[i] for i in idx], gen), tokenizer.pad_token_id)
        ids, mask = ids.to(_device(model)), mask.to(_device(model))
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        losses.append(_update(model, opt, sched, loss))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def reward_model_from(policy: GPT2LMHeadModel, seed: int) -> GPT2ForSequenceClassification:
    """A one-output classifier whose transformer is a copy of the policy's; a fresh, small score head."""
    config = GPT2Config.from_dict({**policy.config.to_dict(), "num_labels": 1})
    torch.manual_seed(seed)
    rm = GPT2ForSequenceClassification(config)
    rm.transformer.load_state_dict(policy.transformer.state_dict())
    torch.nn.init.normal_(rm.score.weight, std=0.02)
    return rm


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rewards(rm: GPT2ForSequenceClassification, seqs: list[list[int]], pad: int) -> torch.Tensor:
    ids, mask = _right_pad(seqs, pad)
    return rm(input_ids=ids.to(_device(rm)), attention_mask=mask.to(_device(rm))).logits[:, 0].float()


def train_reward_model(
    rm: GPT2ForSequenceClassification,
    tokenizer: PreTrainedTokenizerFast,
    pairs: Sequence[Pair],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_step: OnStep | None = None,
) -> list[float]:
    """Bradley-Terry: minimise -log sigmoid(r(chosen) - r(rejected)) over random batches of pairs."""
    gen = torch.Generator().manual_seed(seed)
    chosen = _encode(tokenizer, [p.chosen_text for p in pairs], eos=False)
    rejected = _encode(tokenizer, [p.rejected_text for p in pairs], eos=False)
    opt, sched = _optimizer(rm, lr, steps)
    batches = _batches([max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)], batch_size, gen)
    rm.train()
    losses = []
    for step in range(steps):
        idx = next(batches)
        seqs = _drop_bos([chosen[i] for i in idx] + [rejected[i] for i in idx], gen)
        r = _rewards(rm, seqs, tokenizer.pad_token_id)
        loss = -F.logsigmoid(r[:batch_size] - r[batch_size:]).mean()
        losses.append(_update(rm, opt, sched, loss))
        if on_step is not None:
            on_step(step, losses[-1])
    rm.eval()
    return losses


@torch.no_grad()
def reward_scores(
    rm: GPT2ForSequenceClassification,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Reward of each full text ("<bos> prompt completion", right-padded)."""
    seqs = _encode(tokenizer, texts, eos=False)
    out = [
        _rewards(rm, seqs[i : i + batch_size], tokenizer.pad_token_id)
        for i in range(0, len(seqs), batch_size)
    ]
    return torch.cat(out).cpu() if out else torch.empty(0)


@torch.no_grad()
def rescale_reward(rm: GPT2ForSequenceClassification, scores: torch.Tensor) -> float:
    """Divide the score head by the standard deviation of `scores` (the head has no bias to shift)."""
    std = float(scores.std())
    rm.score.weight.div_(std)
    return std


@torch.no_grad()
def sample(
    policy: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 128,
) -> list[str]:
    """Completions (decoded without special tokens) sampled from the policy at `temperature`."""
    torch.manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[i : i + batch_size]), return_tensors="pt", padding=True, padding_side="left"
        ).to(_device(policy))
        gen = policy.generate(**batch, max_new_tokens=max_new_tokens, temperature=temperature, do_sample=True)
        out += tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1] :].cpu(), skip_special_tokens=True)
    return out
