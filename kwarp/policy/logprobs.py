"""Log-probabilities of completions under a causal LM: what the update, the reference passes and the
evaluation's KL compute (kwarp.policy re-exports these).

π means the sampling distribution softmax(logits / temperature), in float32. Only the C positions
that predict a completion get logits (logits_to_keep), and the k samples of a prompt share it: the
prompt runs once per group and its KV cache is repeated (_completion_logits). Without grad the
logits are overwritten in place (temperature, exp) rather than copied: at a 32k vocabulary a fresh
N·C·V tensor costs more than the arithmetic on it (_token_logprobs; docs/performance.md).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kwarp.policy import lean_forward

if TYPE_CHECKING:
    from kwarp.policy.sampling import Samples



@dataclass(frozen=True)
class SequenceLogProbs:
    logprob: torch.Tensor  # [N] Σ_t log π(y_t | x, y_<t) over the completion (with grad if the forward had it)
    entropy: torch.Tensor | None  # [N] mean per-token entropy over the completion (detached), when asked
    tokens: torch.Tensor  # [N] completion lengths


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model: Any) -> bool:
    bare = getattr(model, "module", model)  # DDP wraps the model in .module
    kind = type(bare)
    if kind not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[kind] = "logits_to_keep" in inspect.signature(bare.forward).parameters
    return _LOGITS_TO_KEEP[kind]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as generation computes them for left-padded prompts."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def _groups_share_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: int) -> bool:
    """Whether rows g·k … g·k + k − 1 hold the same prompt (ids and padding) for every group g."""
    n, width = prompt_ids.shape
    if n % group:
        return False
    ids = prompt_ids.reshape(n // group, group, width)
    mask = prompt_mask.reshape(n // group, group, width)
    return bool(ids.eq(ids[:, :1]).all()) and bool(mask.eq(mask[:, :1]).all())


def _completion_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int, group: int
) -> list[torch.Tensor]:
    """The logits at the `width` positions that predict the completion (column j predicts token j + 1),
    as consecutive pieces along the completion (joining them would copy N·C·V floats for nothing).

    group k > 1: the k rows of a group share their prompt, so the prompt goes through the model once
    per group (its KV cache then repeated k times) and the completions run on top of that cache:
    P·N/k + C·N token positions instead of (P + C)·N, with the same result up to float rounding
    (the attention sums in another order). The last completion token predicts nothing and is not
    run either. Gradients flow through the repeated cache into the prompt's one forward.
    """
    n, total = input_ids.shape
    prompt = total - width
    if group > 1 and not _groups_share_prompts(input_ids[:, :prompt], attention_mask[:, :prompt], group):
        group = 1  # rows not laid out as `sample` lays them out: one forward over every row, as before
    positions = position_ids(attention_mask)
    if group > 1 and lean_forward.supports(model, input_ids):
        # GPT-2 on a CPU: both parts in one pass without transformers' per-forward Python (kwarp/policy/lean_forward.py).
        return lean_forward.completion_logits(model, input_ids, attention_mask, positions, width, group)
    if group > 1 and _accepts_logits_to_keep(model):
        # DDP: the prompt runs through the wrapped module itself. Its parameters' gradients still reach
        # DDP's hooks once per backward (autograd sums every use of a parameter before accumulating it).
        bare = getattr(model, "module", model)
        head = bare(
            input_ids=input_ids[::group, :prompt],
            attention_mask=attention_mask[::group, :prompt],
            position_ids=positions[::group, :prompt],
            use_cache=True,
            logits_to_keep=1,
        )
        cache = head.cache
        if cache is not None and hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(group)
            first = head.logits[:, -1:].repeat_interleave(group, dim=0)
            if width == 1:
                return [first]
            rest = model(
                input_ids=input_ids[:, prompt:-1],
                attention_mask=attention_mask[:, :-1],
                position_ids=positions[:, prompt:-1],
                cache=cache,
                use_cache=True,
            )
            return [first, rest.logits]
    kwargs: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = width + 1
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=False,
        **kwargs,
    )
    return [out.logits[:, -(width + 1) : -1]]


class _TokenLogProbs(torch.autograd.Function):
    """log π(y_t) = z(y_t) − logsumexp(z), z = logits / T, with grad: one N·c·V float32 buffer in all.

    Autograd's composition (z / T, logsumexp, their backward) writes five fresh N·c·V tensors per
    call plus the gather's zero-filled gradient; on a CPU each fresh tensor costs cold-memory traffic
    that the arithmetic does not (kwarp's 1k-vocabulary step: the out-of-place passes over the update's
    logits took ~7 ms against well under 1 ms in place; docs/performance.md). Here z is written once,
    then turned in place into exp(z − max), which backward reads to write the gradient
    (onehot(y) − softmax(z)) · g / T: two fresh tensors in all. The caller's logits are only read, and
    the saved buffer too (a retained graph can run backward again, as gradcheck does).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
        if logits.dtype == torch.float32 and temperature != 1.0:
            z = torch.div(logits, temperature)  # one pass over N·c·V, not a copy and then a division
        else:
            z = torch.empty_like(logits, dtype=torch.promote_types(logits.dtype, torch.float32))
            z.copy_(logits)  # widened first: bfloat16 logits divided in bfloat16 would lose precision
            if temperature != 1.0:
                z.div_(temperature)
        index = targets.unsqueeze(-1)
        picked = z.gather(-1, index).squeeze(-1)
        top = z.amax(dim=-1, keepdim=True)
        u = z.sub_(top)  # u = z − max ≤ 0
        entropy = None
        if with_entropy:
            # H = logsumexp(z) − Σ softmax(z)·z = log s − Σ e·u / s, with e = exp(u), s = Σ e.
            weighted = (u.exp() * u).sum(dim=-1, keepdim=True)
        e = u.exp_()
        s = e.sum(dim=-1, keepdim=True)
        log_s = s.log()
        logp = picked - (top + log_s).squeeze(-1)
        if with_entropy:
            entropy = (log_s - weighted / s).squeeze(-1)
        ctx.save_for_backward(e, s, index)
        ctx.temperature, ctx.logits_dtype = temperature, logits.dtype
        if entropy is None:
            return logp, logp.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_entropy: Any):
        e, s, index = ctx.saved_tensors
        g = grad_logp.unsqueeze(-1).to(e.dtype) / ctx.temperature
        grad = e * (-g / s)  # −softmax(z) · g / T
        grad.scatter_add_(-1, index, g)  # + onehot(y) · g / T
        return grad.to(ctx.logits_dtype), None, None, None


def _token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t) of each target [N, c] from its logits [N, c, V], and the entropy at each position.

    log π(y_t) = z(y_t) − logsumexp(z) for z = logits / T, computed as max + log Σ exp(z − max) on
    both paths. With grad: _TokenLogProbs (one N·c·V buffer, the logits only read). Without grad
    the logits are scaled and exponentiated in place: a fresh N·c·V tensor for z / T, and
    logsumexp's own temporary, cost more than the arithmetic (on one CPU thread at 768 × 32k: 55 ms
    to divide out of place, 3.7 ms in place; logsumexp 95 ms, in place 32 ms). The caller's logits
    must not be needed after a call without grad.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        logp, entropy = _TokenLogProbs.apply(logits, targets, temperature, with_entropy)
        return logp, (entropy if with_entropy else None)
    z = logits.float()
    if temperature != 1.0:
        z = z.div_(temperature)
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        # H = logsumexp(z) − Σ softmax(z)·z
        probs = torch.softmax(z, dim=-1)
        entropy = torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1)
        del probs
    top = z.amax(dim=-1, keepdim=True)
    log_normaliser = top.squeeze(-1) + z.sub_(top).exp_().sum(dim=-1).log()
    return picked - log_normaliser, entropy


def sequence_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    samples_per_prompt: int = 1,
) -> SequenceLogProbs:
    """log π(y|x) of each row's completion, the last C = completion_mask.shape[1] columns of input_ids.

    Computed in float32 from logits at temperature T (the sampling distribution). Only the C
    positions that predict the completion get logits, so memory is N·C·V floats, not N·L·V.
    Gradients flow when the caller runs it with grad enabled. `samples_per_prompt` k > 1: rows come
    in groups of k with the same prompt (as `sample` returns them), and each prompt is run through
    the model once, not k times (_completion_logits); rows that do not are run one forward per row.
    """
    width = completion_mask.shape[1]
    if width >= input_ids.shape[1]:
        raise ValueError("completion_mask must cover only the completion: fewer columns than input_ids")
    targets = input_ids[:, -width:]
    pieces, done = [], 0
    for logits in _completion_logits(model, input_ids, attention_mask, width, samples_per_prompt):
        c = logits.shape[1]
        pieces.append(_token_logprobs(logits, targets[:, done : done + c], temperature, with_entropy))
        done += c
    token_logp = torch.cat([logp for logp, _ in pieces], dim=1)
    mask = completion_mask.to(token_logp.dtype)
    tokens = completion_mask.sum(dim=1)
    entropy = None
    if with_entropy:
        token_entropy = torch.cat([h for _, h in pieces], dim=1)  # type: ignore[misc]
        entropy = (token_entropy * mask).sum(dim=1) / tokens.clamp(min=1)
    return SequenceLogProbs(logprob=(token_logp * mask).sum(dim=1), entropy=entropy, tokens=tokens)


@torch.no_grad()
def batched_logprobs(
    model: Any,
    samples: Samples,
    *,
    temperature: float,
    micro_batch: int,
    with_entropy: bool = False,
    samples_per_prompt: int = 1,
) -> SequenceLogProbs:
    """sequence_logprobs without grad, `micro_batch` rows at a time (reference and anchor models).

    With samples_per_prompt k > 1, micro_batch must be a multiple of k (a group is never split).
    """
    parts = [
        sequence_logprobs(
            model,
            chunk.input_ids,
            chunk.attention_mask,
            chunk.completion_mask,
            temperature=temperature,
            with_entropy=with_entropy,
            samples_per_prompt=samples_per_prompt,
        )
        for chunk in (samples.rows(s, s + micro_batch) for s in range(0, samples.completion_ids.shape[0], micro_batch))
    ]
    entropy = torch.cat([p.entropy for p in parts]) if with_entropy else None  # type: ignore[misc]
    return SequenceLogProbs(
        logprob=torch.cat([p.logprob for p in parts]),
        entropy=entropy,
        tokens=torch.cat([p.tokens for p in parts]),
    )
