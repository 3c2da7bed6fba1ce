"""kwarp's own decode loop: transformers' ancestral sampling without `generate`'s per-token overhead.

Three ways to draw completions (`spec.training.generation`):

- `plain`    transformers' `generate` with a dynamic KV cache: the reference the other two are held to.
- `compiled` this loop with a static KV cache (preallocated once per step) and the one-token decode
             forward under `torch.compile`. Prompts are left-padded to a multiple of PROMPT_BUCKET
             tokens, so the cache, the mask and every decode input keep one shape from step to step
             and nothing recompiles after the first step of each prompt bucket.
- `auto`     `compiled` on CUDA; on a CPU this loop uncompiled (it measured fastest there:
             benchmarks/train_step.py, docs/performance.md), its decode steps through
             kwarp/policy/lean_decode.py for GPT-2 and Llama, else transformers' forward with a dynamic cache.

The distribution is exactly generate's: softmax(float32 logits / temperature) with nothing else
applied, drawn from torch's global RNG (by inverse CDF in float64 rather than generate's
torch.multinomial, which costs more than the rest of the draw), a finished row continuing with the
pad token. Besides the tokens, the loop keeps what the sampler has already computed and the update
would otherwise recompute: each drawn token's log-probability and the entropy of the distribution it
was drawn from (the trainer logs the mean entropy; it no longer takes a second softmax over
N·C·V logits in the update for it).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

Generation = Literal["auto", "plain", "compiled"]
GENERATIONS: tuple[str, ...] = ("auto", "plain", "compiled")
PROMPT_BUCKET = 32
# torch.compile's backend for the decode step. Inductor needs a C compiler at run time (Triton builds
# its launcher with one); where compilation fails, the loop runs uncompiled (_compile_failed).
COMPILE_BACKEND: Any = "inductor"
# Static KV caches kept per compiled model, least recently used dropped first. A trainer uses one
# (rows, prompt bucket) shape per bucket its prompts fall in; each cache holds rows × (bucket + new
# tokens) keys and values per layer (a 1B model, 64 rows, 384 positions, bf16: about 3.6 GB), so an
# unbounded dict grows with the number of buckets a run's prompts spread over. A dropped shape that
# comes back gets a fresh cache of the same shape (the compiled graph takes the cache as an input).
MAX_STATIC_CACHES = 2


@dataclass(frozen=True)
class Decoded:
    """What the decode loop drew. Row r of every tensor is row r of the prompts."""

    prompt_ids: torch.Tensor  # [N, P] left-padded, as the caller gave them
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] pad after a row's first EOS
    token_logprob: torch.Tensor  # [N, C] float32 log π(y_t | x, y_<t) of each drawn token
    token_entropy: torch.Tensor  # [N, C] float32 entropy of the distribution y_t was drawn from


def resolve(generation: str, device: torch.device) -> str:
    """The decode path `generation` means on `device`: plain, compiled or eager."""
    if generation not in GENERATIONS:
        raise ValueError(f"unknown generation '{generation}'; use one of {', '.join(GENERATIONS)}")
    if generation == "auto":
        return "compiled" if device.type == "cuda" else "eager"
    return generation


def left_pad(ids: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded to `width` columns (masked out: positions and outputs do not change)."""
    extra = width - ids.shape[1]
    if extra <= 0:
        return ids, mask
    return (
        torch.cat([ids.new_full((ids.shape[0], extra), pad_id), ids], dim=1),
        torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], dim=1),
    )


def _draw(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / T); with its log-probability and the distribution's entropy.

    Drawn by inverse CDF: u uniform on [0, Σ e) in float64, the token is the first whose cumulative
    weight exceeds u, where e = exp(z − max z). That is the softmax distribution exactly (a
    zero-weight token is never drawn), in one pass over the vocabulary instead of softmax +
    torch.multinomial (2-16x faster on a CPU: docs/performance.md); the same pass gives log Σ e
    for the log-probability and the entropy H = log Σ e − Σ e·z / Σ e (z shifted by its max).
    """
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    shifted = scores - scores.amax(dim=-1, keepdim=True)
    weights = shifted.exp()
    cumulative = weights.cumsum(dim=-1, dtype=torch.float64)
    total = cumulative[:, -1:]
    u = torch.rand(total.shape, dtype=torch.float64, device=total.device) * total
    token = torch.searchsorted(cumulative, u, right=True).clamp_(max=scores.shape[-1] - 1).squeeze(1)
    log_total = total.squeeze(1).log().float()
    logprob = shifted.gather(-1, token[:, None]).squeeze(1) - log_total
    entropy = log_total - (weights * shifted).sum(dim=-1) / total.squeeze(1).float()
    return token, logprob, entropy


class _DecodeStep:
    """The one-token forward of the compiled path, compiled once per model, and its static caches.

    A cache is kept per (rows, length) and reset, not reallocated, between calls, for at most
    MAX_STATIC_CACHES shapes (least recently used dropped first, so memory stays bounded however many
    prompt buckets a run's prompts spread over).
    """

    def __init__(self, model: Any):
        self.model = model
        self.caches: OrderedDict[tuple[int, int], Any] = OrderedDict()
        # dynamic=False: one graph per shape, and the shapes do not change between steps of a run.
        self.forward = torch.compile(self._forward, dynamic=False, backend=COMPILE_BACKEND)
        self.failed = False

    def cache(self, rows: int, length: int) -> Any:
        from transformers import StaticCache

        key = (rows, length)
        cache = self.caches.get(key)
        if cache is None:
            while len(self.caches) >= max(MAX_STATIC_CACHES, 1):
                self.caches.popitem(last=False)  # its memory goes back once the last step using it returns
            cache = self.caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        else:
            cache.reset()
            self.caches.move_to_end(key)
        return cache

    def _forward(self, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache, use_cache=True)
        return out.logits[:, -1]


_COMPILED: dict[int, _DecodeStep] = {}


def _decode_step(model: Any) -> _DecodeStep:
    step = _COMPILED.get(id(model))
    if step is None or step.model is not model:
        step = _COMPILED[id(model)] = _DecodeStep(model)
    return step


def _plain_static(cache: Any) -> bool:
    """Whether every layer of the static cache is a full-attention StaticLayer (no sliding window)."""
    from transformers.cache_utils import StaticLayer

    return all(type(layer) is StaticLayer for layer in cache.layers)


def _is_compile_failure(err: BaseException) -> bool:
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return isinstance(err, TorchDynamoException | InductorError)


@torch.no_grad()
def decode(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos: Sequence[int],
    pad_id: int,
    compiled: bool,
    samples_per_prompt: int = 1,
) -> Decoded:
    """Sample up to `max_new_tokens` tokens per row; stops early once every row has drawn an EOS.

    `samples_per_prompt` k > 1: rows come in groups of k with the same prompt (as `sample` builds
    them); the uncompiled loop then runs each prompt through the model once and repeats its KV cache.

    If the compiled path cannot compile here (no C compiler for Triton, an unsupported model), this
    call and every later one for the model run the uncompiled loop instead, with one warning: a
    trainer whose image lacks a compiler still trains, at the uncompiled speed.
    """
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, eos=eos, pad_id=pad_id, group=samples_per_prompt
    )
    if compiled and not _decode_step(model).failed:
        try:
            return _decode(model, prompt_ids, prompt_mask, compiled=True, **kwargs)
        except Exception as err:
            if not _is_compile_failure(err):
                raise
            _decode_step(model).failed = True
            warnings.warn(
                f"kwarp: torch.compile of the decode step failed ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
                "generation continues uncompiled (spec.training.generation: auto or compiled)",
                RuntimeWarning,
                stacklevel=2,
            )
    return _decode(model, prompt_ids, prompt_mask, compiled=False, **kwargs)


def _decode(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos: Sequence[int],
    pad_id: int,
    compiled: bool,
    group: int,
) -> Decoded:
    from transformers import DynamicCache

    from kwarp.policy import lean_decode
    from kwarp.policy.logprobs import position_ids

    original_width = prompt_ids.shape[1]
    if compiled:
        width = -(-prompt_ids.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET
        prompt_ids, prompt_mask = left_pad(prompt_ids, prompt_mask, width, pad_id)
    n, p = prompt_ids.shape
    device = prompt_ids.device
    eos_t = torch.tensor(list(eos), device=device)
    # The mask over prompt + completion, allocated once: generated columns are attended to once written,
    # and a column not yet written lies in the future, which the causal mask already hides.
    mask = torch.cat([prompt_mask, prompt_mask.new_ones((n, max_new_tokens))], dim=1)
    step = _decode_step(model) if compiled else None
    cache = step.cache(n, p + max_new_tokens) if step is not None else DynamicCache(config=model.config)
    positions = position_ids(prompt_mask)
    # The prompt pass: a prompt shared by `group` rows runs once, into a dynamic cache, and its keys and
    # values are repeated (the same numbers, up to float rounding). Compiled, they are then written into
    # the static cache, which only full-attention layers allow (a sliding-window layer keeps another
    # slice of the prompt); otherwise the static cache is filled by a pass over every row.
    share = group > 1 and n % group == 0 and (step is None or _plain_static(cache))
    stride = group if share else 1
    prefill_cache = DynamicCache(config=model.config) if share and step is not None else cache
    out = model(
        input_ids=prompt_ids[::stride],
        # Into the static cache its full-width mask (one shape for the compiled graph), else the prompt's.
        attention_mask=prompt_mask[::stride] if step is None or share else mask,
        position_ids=positions[::stride],
        cache=prefill_cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1]
    del out
    if share:
        logits = logits.repeat_interleave(group, dim=0)
    # Uncompiled, the decode steps of a supported model skip transformers' per-forward Python
    # (kwarp/policy/lean_decode.py): the same logits up to float rounding, so the same distribution. It
    # takes the prompt pass's keys and values once per prompt and repeats them into its own buffers.
    lean = None
    if step is None and lean_decode.supports(model) and not torch.is_autocast_enabled(device.type):
        lean = lean_decode.LeanDecoder(model, cache, prompt_mask, max_new_tokens, group=stride)
        del cache, prefill_cache
    elif share:
        prefill_cache.batch_repeat_interleave(group)
        if prefill_cache is not cache:
            for index, layer in enumerate(prefill_cache.layers):
                cache.update(layer.keys, layer.values, index)
    position = positions[:, -1:] + 1
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    tokens, logprobs, entropies = [], [], []
    for t in range(max_new_tokens):
        token, logprob, entropy = _draw(logits, temperature)
        token = torch.where(unfinished, token, torch.full_like(token, pad_id))
        tokens.append(token)
        logprobs.append(logprob)
        entropies.append(entropy)
        unfinished &= ~torch.isin(token, eos_t)
        if t + 1 == max_new_tokens or not bool(unfinished.any()):
            break
        if step is not None:
            logits = step.forward(token[:, None], position, mask, cache)
        elif lean is not None:
            logits = lean.step(token, position)
        else:
            out = model(
                input_ids=token[:, None],
                attention_mask=mask[:, : p + t + 1],
                position_ids=position,
                cache=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1]
        position = position + 1
    # The bucket's extra columns are padding only: the caller gets its prompts back as it gave them.
    return Decoded(
        prompt_ids=prompt_ids[:, -original_width:],
        prompt_mask=prompt_mask[:, -original_width:],
        completion_ids=torch.stack(tokens, dim=1),
        token_logprob=torch.stack(logprobs, dim=1),
        token_entropy=torch.stack(entropies, dim=1),
    )
