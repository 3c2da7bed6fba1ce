"""Rewards: a Python callable (`module:function`) or a sequence-classification model, one float32 per
(prompt, completion) pair."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from kwarp.core.errors import UserError
from kwarp.policy.models import model_folder, resolve_dtype

if TYPE_CHECKING:
    from kwarp.core.spec import RewardSpec, StorageSpec


class Reward(Protocol):
    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """One float32 reward per (prompt, completion) pair, on the CPU."""
        ...


def _as_rewards(values: Any, n: int, source: str, allow_nonfinite: bool = False) -> torch.Tensor:
    rewards = torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)
    if rewards.numel() != n:
        raise UserError(f"reward {source} returned {rewards.numel()} values for {n} completions")
    if not allow_nonfinite and not torch.isfinite(rewards).all():
        raise UserError(f"reward {source} returned a non-finite value (nan or inf)")
    return rewards


@dataclass
class CallableReward:
    """A Python function `(prompts, completions) -> list[float] | Tensor` named `module:function`."""

    fn: Callable[[list[str], list[str]], Any]
    name: str
    # The trainer takes nan/inf through (its non-finite guard skips the step); evaluation refuses them.
    allow_nonfinite: bool = False

    @classmethod
    def from_name(cls, name: str, field: str = "spec.reward.callable") -> CallableReward:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ImportError as err:
            raise UserError(f"{field}: cannot import module '{module}' ({err})") from None
        except AttributeError:
            raise UserError(f"{field}: module '{module}' has no attribute '{attr}'") from None
        if not callable(fn):
            raise UserError(f"{field}: '{name}' is not callable")
        return cls(fn=fn, name=name)

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        with torch.no_grad():
            values = self.fn(list(prompts), list(completions))
            return _as_rewards(values, len(completions), f"'{self.name}'", self.allow_nonfinite)


@dataclass
class ClassifierReward:
    """A sequence-classification model scoring prompt + completion; the reward is logit `output_index`."""

    model: Any
    tokenizer: Any
    output_index: int = 0
    batch_size: int = 32
    max_length: int | None = None
    allow_nonfinite: bool = False

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
            ).to(device)
            logits = self.model(**enc).logits
            out.append(logits[:, self.output_index].float().cpu())
        return _as_rewards(torch.cat(out), len(texts), "model", self.allow_nonfinite)


def load_reward(
    spec: RewardSpec,
    device: str | torch.device = "cpu",
    *,
    storage: StorageSpec | None = None,
    batch_size: int = 32,
    allow_nonfinite: bool = False,
) -> Reward:
    """The reward a spec names: a classifier model (right-padded, pad = EOS if none) or a callable.

    Messages name the spec's own path (spec.reward, or spec.evaluation.goldReward for a gold reward).
    A non-finite reward is an error unless `allow_nonfinite` (the trainer's guard skips such a step).
    """
    path = spec._path
    if spec.callable is not None:
        reward = CallableReward.from_name(spec.callable, f"{path}.callable")
        reward.allow_nonfinite = allow_nonfinite
        return reward
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert spec.location is not None
    folder = model_folder(spec.location, f"{path}.location", storage=storage)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        dtype=resolve_dtype(spec.dtype, device),
        use_safetensors=True,
        trust_remote_code=spec.trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Classifiers read the last non-pad token: right padding keeps it in place for every row, and
    # over-long texts lose their beginning, never the completion being judged.
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    n_labels = int(getattr(model.config, "num_labels", 1))
    if spec.output_index >= n_labels:
        raise UserError(f"{path}.outputIndex is {spec.output_index} but the reward model has {n_labels} outputs")
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return ClassifierReward(
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        output_index=spec.output_index,
        batch_size=batch_size,
        max_length=max_len,
        allow_nonfinite=allow_nonfinite,
    )
