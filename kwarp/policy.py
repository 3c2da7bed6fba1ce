"""The policy side of RL, shared by the trainer and the evaluation: load, sample, score, log-probs.

Conventions every caller relies on:

- Weights are read from safetensors only (`use_safetensors=True`, folders checked by
  `refuse_pickles`); model code shipped with the weights runs only if the spec enables it.
- Prompts are left-padded (and left-truncated), so the completion of every row starts at the
  same column and a batch of completions is one rectangular tensor.
- π(y|x) is the *sampling* distribution: softmax(logits / temperature) with nothing else applied.
  `sample` makes sure no top-k, top-p, repetition penalty or other logits processor coming from a
  checkpoint's generation_config.json changes it, and `sequence_logprobs` divides by the same
  temperature; REINFORCE's gradient and the KL estimates are only correct for that distribution.
- A completion runs up to and including its first EOS; later positions are padding.
- Log-probabilities are computed in float32 from the logits, whatever dtype the model runs in.
- Sampling draws from torch's global RNG (CPU or CUDA, per device). Callers that must be
  reproducible seed it and save its state (the trainer does; the evaluation forks it).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from kwarp.core import locations
from kwarp.core.checkpoints import CheckpointError, refuse_pickles
from kwarp.core.errors import UserError
from kwarp.core.prompts import read_prompts  # noqa: F401 - re-exported: trainer and evaluate import it from here
from kwarp.core.weights import TensorReader
from kwarp.logprobs import (  # noqa: F401 - re-exported: trainer, evaluation and tests import them from here
    SequenceLogProbs,
    batched_logprobs,
    position_ids,
    sequence_logprobs,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from kwarp.core.spec import RewardSpec, StorageSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------- dtype


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The spec's dtype name as a torch dtype; "auto" = bfloat16 on a CUDA device that supports it."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -------------------------------------------------------------------------------------- loading


def model_folder(
    location: str | Path,
    field: str = "model",
    *,
    storage: StorageSpec | None = None,
    revision: str | None = None,
) -> Path:
    """A local folder holding the model `location` names (fetched when remote), with safetensors weights."""
    folder = location if isinstance(location, Path) else locations.fetch(location, field, storage, revision)
    if not folder.is_dir():
        raise UserError(f"{field}: '{location}' is not a folder; give a Hugging Face model folder")
    if not (folder / "config.json").is_file():
        raise UserError(f"{field}: {folder} has no config.json; give a Hugging Face model folder")
    refuse_pickles(folder)
    return folder


def load_causal_lm(
    location: str | Path,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    *,
    storage: StorageSpec | None = None,
    revision: str | None = None,
    field: str = "spec.policy.location",
) -> PreTrainedModel:
    """A causal LM in eval mode (dropout off: RL log-probs must be those of the sampling policy), its
    tanh-GELU activations fused (kwarp.fused: the same function in one kernel)."""
    from transformers import AutoModelForCausalLM

    from kwarp.fused import fuse_activations_

    folder = model_folder(location, field, storage=storage, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=resolve_dtype(dtype, device),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    fuse_activations_(model)
    return model.to(device).eval()


def load_tokenizer(
    location: str | Path,
    trust_remote_code: bool = False,
    *,
    storage: StorageSpec | None = None,
    revision: str | None = None,
    field: str = "spec.policy.location",
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, padding and truncating on the left, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer

    folder = model_folder(location, field, storage=storage, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token is None:
        raise UserError(f"{field}: the tokenizer in {folder} has no EOS token; completions could never end")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    return tokenizer


def checkpoint_dtype(folder: Path) -> torch.dtype:
    """The dtype the checkpoint stores its floating-point weights in (the first floating tensor's)."""
    with TensorReader(folder) as reader:
        for name in reader.names():
            t = reader.get(name)
            if t.is_floating_point():
                return t.dtype
    return torch.float32


def unique_parameters(model: torch.nn.Module) -> dict[str, list[str]]:
    """{canonical name: all names} of each distinct parameter (tied weights share one entry)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {names[0]: names for names in by_id.values()}


@torch.no_grad()
def copy_weights_(model: torch.nn.Module, folder: Path) -> None:
    """Overwrite every parameter of `model` in place from a checkpoint folder (safetensors, by name).

    Tied parameters are found under any of their names, since a checkpoint keeps only one of them.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    with TensorReader(folder) as reader:
        present = set(reader.names())
        for canonical, names in unique_parameters(model).items():
            stored = next((n for n in names if n in present), None)
            if stored is None:
                raise CheckpointError(f"{folder}: parameter '{canonical}' is missing; is it the same architecture?")
            source = reader.get(stored)
            target = params[canonical]
            if source.shape != target.shape:
                raise CheckpointError(
                    f"{folder}: '{stored}' has shape {tuple(source.shape)}, the model expects {tuple(target.shape)}"
                )
            target.copy_(source)


# -------------------------------------------------------------------------------------- prompts


# --------------------------------------------------------------------------------------- reward


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


# ------------------------------------------------------------------------------------- sampling


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

    `generation` (auto, plain, compiled: kwarp.generation) picks the decode loop; every one draws
    from the same distribution. `model` must be the bare model (not a DDP wrapper). Randomness:
    torch's global RNG. `synced`: the model is sharded over processes (FSDP), so every forward is a
    collective: transformers' generate with synced_gpus keeps each process stepping until all are done.
    """
    from kwarp import generation as gen

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
