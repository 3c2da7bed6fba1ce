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

The package, by role: `models` (dtype, device, loading a model or tokenizer folder, copying weights), `rewards`
(a callable or a classifier as the reward), `sampling` (drawing completions, `Samples`), `generation` (kwarp's
decode loops, `spec.training.generation`), `logprobs` (the update's, the references' and the evaluation's
log-probabilities); on a CPU, `lean_decode` and `lean_forward` (hook-free forwards of the decode step and of the
log-prob passes) and `fused` (GPT-2's tanh GELU as x·sigmoid(2a)). Callers import the names below from
`kwarp.policy`.
"""

from __future__ import annotations

from kwarp.core.prompts import read_prompts
from kwarp.policy.logprobs import SequenceLogProbs, batched_logprobs, position_ids, sequence_logprobs
from kwarp.policy.models import (
    checkpoint_dtype,
    copy_weights_,
    default_device,
    load_causal_lm,
    load_tokenizer,
    model_folder,
    resolve_dtype,
    unique_parameters,
)
from kwarp.policy.rewards import CallableReward, ClassifierReward, Reward, load_reward
from kwarp.policy.sampling import (
    Samples,
    completion_mask,
    decode_completions,
    encode_prompts,
    eos_ids,
    mean_and_stderr,
    sample,
)

__all__ = [
    "CallableReward",
    "ClassifierReward",
    "Reward",
    "Samples",
    "SequenceLogProbs",
    "batched_logprobs",
    "checkpoint_dtype",
    "completion_mask",
    "copy_weights_",
    "decode_completions",
    "default_device",
    "encode_prompts",
    "eos_ids",
    "load_causal_lm",
    "load_reward",
    "load_tokenizer",
    "mean_and_stderr",
    "model_folder",
    "position_ids",
    "read_prompts",
    "resolve_dtype",
    "sample",
    "sequence_logprobs",
    "unique_parameters",
]
