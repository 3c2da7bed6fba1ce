"""Sampling completions from the policy (its untruncated temperature distribution) and reading them back."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Samples:
    """Completions of a batch of prompts. Row r holds prompt r // k (k samples per prompt, adjacent)."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the first EOS
    # What kwarp's decode loop computed while sampling (None from transformers' generate): per row,
    # Σ log π(y_t) and the mean per-token entropy over the completion, float32, at the temperature.
    logprob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        # Generation attended to every generated position; mirror it so the positions match.
        return torch.cat([self.prompt_mask, torch.ones_like(self.completion_mask)], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)

    def rows(self, start: int, stop: int) -> Samples:
        return Samples(
            self.prompt_ids[start:stop],
            self.prompt_mask[start:stop],
            self.completion_ids[start:stop],
            self.completion_mask[start:stop],
            None if self.logprob is None else self.logprob[start:stop],
            None if self.entropy is None else self.entropy[start:stop],
        )


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation EOS set."""
    ids = {int(tokenizer.eos_token_id)}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
    return sorted(ids)


def completion_mask(completion_ids: torch.Tensor, eos: Sequence[int]) -> torch.Tensor:
    """1 on the tokens of each completion up to and including its first EOS, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos), device=completion_ids.device)).long()
    eos_before = (is_eos.cumsum(dim=1) - is_eos) > 0
    return (~eos_before).long()


@contextmanager
def _plain_sampling(model: Any, eos: list[int], pad_id: int, temperature: float, max_new_tokens: int) -> Iterator[Any]:
    """Generation settings for plain ancestral sampling, whatever the checkpoint's generation_config says.

    transformers fills every unset generation field from `model.generation_config` and then from
    its global defaults (top_k=50). Swapping in a config that holds only special tokens, and
    passing every sampling field explicitly, leaves softmax(logits / T) untouched.
    """
    from transformers import GenerationConfig

    saved = model.generation_config
    bos = getattr(saved, "bos_token_id", None)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad_id)
    try:
        yield GenerationConfig(
            do_sample=True,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            top_k=0,
            top_p=1.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
            renormalize_logits=False,
            remove_invalid_values=False,
            use_cache=True,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad_id,
        )
    finally:
        model.generation_config = saved


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_prompt_tokens: int | None, device: Any) -> Any:
    return tokenizer(
        list(prompts),
        return_tensors="pt",
        padding=True,
        truncation=max_prompt_tokens is not None,
        max_length=max_prompt_tokens,
        add_special_tokens=True,
    ).to(device)


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int,
    temperature: float,
    max_prompt_tokens: int | None = None,
    generation: str = "plain",
    synced: bool = False,
) -> Samples:
    """Sample `samples_per_prompt` completions per prompt with the KV cache (rows prompt-major).

    `generation` (auto, plain, compiled: kwarp.policy.generation) picks the decode loop; every one draws
    from the same distribution. `model` must be the bare model (not a DDP wrapper). Randomness:
    torch's global RNG. `synced`: the model is sharded over processes (FSDP), so every forward is a
    collective: transformers' generate with synced_gpus keeps each process stepping until all are done.
    """
    from kwarp.policy import generation as gen

    device = next(model.parameters()).device
    enc = encode_prompts(tokenizer, prompts, max_prompt_tokens, device)
    prompt_ids = enc["input_ids"].repeat_interleave(samples_per_prompt, dim=0)
    prompt_mask = enc["attention_mask"].repeat_interleave(samples_per_prompt, dim=0)
    eos = eos_ids(model, tokenizer)
    path = "plain" if synced else gen.resolve(generation, device)
    if path != "plain":
        drawn = gen.decode(
            model,
            prompt_ids,
            prompt_mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos=eos,
            pad_id=int(tokenizer.pad_token_id),
            compiled=path == "compiled",
            samples_per_prompt=samples_per_prompt,
        )
        cmask = completion_mask(drawn.completion_ids, eos)
        weights = cmask.to(drawn.token_logprob.dtype)
        return Samples(
            prompt_ids,
            prompt_mask,
            drawn.completion_ids,
            cmask,
            logprob=(drawn.token_logprob * weights).sum(dim=1),
            entropy=(drawn.token_entropy * weights).sum(dim=1) / cmask.sum(dim=1).clamp(min=1),
        )
    with _plain_sampling(model, eos, int(tokenizer.pad_token_id), temperature, max_new_tokens) as config:
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config, synced_gpus=synced)
    completion_ids = out[:, prompt_ids.shape[1] :]
    return Samples(prompt_ids, prompt_mask, completion_ids, completion_mask(completion_ids, eos))


def decode_completions(tokenizer: Any, samples: Samples) -> list[str]:
    """Completion texts, cut after the first EOS, special tokens removed."""
    ids = samples.completion_ids.masked_fill(samples.completion_mask == 0, int(tokenizer.pad_token_id))
    return tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error (sample std / √n; 0 for a single value)."""
    v = values.double().reshape(-1)
    n = v.numel()
    if n == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    stderr = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    return mean, stderr
