"""A lean forward of GPT-2 over prompts shared by groups of rows and their completions, for the log-probs
of the update and the reference passes on a CPU (kwarp/policy/logprobs.py's _completion_logits).

transformers' way to run each prompt once per group is two forwards: the prompts into a KV cache, the
cache repeated k times, the completions on top. At the sizes RL runs at on a CPU (the 1k benchmark: 4
layers, d = 128, 8 prompts × 28 tokens and 32 × 23 completion tokens) each forward spends about 2 ms
around its arithmetic: the deprecation and output-capturing wrappers, a 4-D mask built per call, config
lookups, about 55 module calls, the cache's repeat and concatenation. `completion_logits` runs the same
model in one pass with none of that:

- the prompt tokens (one row per group) and the completion tokens share every layer norm, projection
  and MLP as one [prompt tokens + completion tokens, d] matrix: one product per projection instead of
  two forwards' two;
- attention runs per part: the prompts causally over themselves, the completions over their group's
  prompt keys and values (repeated to the group's rows) and causally over their own, with the
  padding as an additive bias (0 where a key is a token, the dtype's minimum where it is padding, as
  kwarp/policy/lean_decode.py and transformers' eager path do: a padded query's row stays finite);
- modules are called as in the lean decode step (lean_decode._direct: the functional call of a
  hook-free module, the module itself otherwise), and the same models qualify (lean_decode.supports),
  GPT-2 only; without grad and with it (the update's gradients flow through the same operations).

Exactness: the same logits as model.forward on the whole sequence up to float rounding (the attention
reduces in another order): tests/test_lean_forward.py holds them within 1e-5, and the gradients of
every parameter to the two-forward path's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kwarp.policy import lean_decode


def supports(model: Any, input_ids: torch.Tensor) -> bool:
    """Whether `model` (not a wrapper: DDP's forward must run) can take the lean forward on these inputs.

    On a CPU only: on a GPU transformers' SDPA path is where kernels are tuned, and nothing here is
    measured there. Not under autocast (the lean forward would not cast as transformers' modules do).
    Not when the model itself has forward hooks: they would not run.
    """
    return (
        type(model).__name__ == "GPT2LMHeadModel"
        and not (model._forward_hooks or model._forward_pre_hooks)  # someone watches the model's forwards
        and input_ids.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and lean_decode.supports(model)
    )


def _bias(key_valid: torch.Tensor, causal_from: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias [rows, 1, queries, keys]: 0 where query i may read key j, else dtype's minimum.

    Key j is readable when it is a token (key_valid [rows, keys]) and, for j ≥ causal_from, when
    j − causal_from ≤ i: the queries are keys causal_from … of the same sequence.
    """
    rows, keys = key_valid.shape
    queries = keys - causal_from
    j = torch.arange(keys, device=key_valid.device)
    i = torch.arange(queries, device=key_valid.device)
    future = (j[None, :] - causal_from) > i[:, None]  # [queries, keys]
    blocked = ~key_valid.bool()[:, None, None, :] | future[None, None]
    return torch.zeros(blocked.shape, dtype=dtype, device=key_valid.device).masked_fill_(
        blocked, torch.finfo(dtype).min
    )


def completion_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, width: int, group: int
) -> list[torch.Tensor]:
    """As logprobs._completion_logits with groups: [logits predicting completion token 0 (from each group's
    prompt), logits predicting tokens 1 … width − 1], [rows, 1, V] and [rows, width − 1, V].

    Rows g·group … g·group + group − 1 share their prompt (ids and mask), which the caller has checked.
    """
    rows, total = input_ids.shape
    prompt = total - width
    groups = rows // group
    body = model.transformer
    layers = [tuple(lean_decode._direct(m) for m in layer) for layer in lean_decode._layers(model)]
    wte, wpe = lean_decode._direct(body.wte), lean_decode._direct(body.wpe)
    ln_f, head = lean_decode._direct(body.ln_f), lean_decode._direct(model.lm_head)

    # Tokens: each group's prompt once, then every row's completion but its last token (it predicts nothing).
    prompt_ids, prompt_pos = input_ids[::group, :prompt], positions[::group, :prompt]
    done_ids, done_pos = input_ids[:, prompt:-1], positions[:, prompt:-1]
    steps = width - 1
    n_prompt = groups * prompt
    ids = torch.cat([prompt_ids.reshape(-1), done_ids.reshape(-1)])
    pos = torch.cat([prompt_pos.reshape(-1), done_pos.reshape(-1)])
    hidden = wte(ids) + wpe(pos)  # [prompt tokens + completion tokens, d]
    dtype = hidden.dtype
    prompt_mask = attention_mask[::group, :prompt]
    prompt_bias = _bias(prompt_mask, 0, dtype)  # [groups, 1, P, P]
    done_bias = _bias(attention_mask[:, :-1], prompt, dtype) if steps else None  # [rows, 1, C − 1, P + C − 1]

    for ln_1, c_attn, c_proj, ln_2, c_fc, act, mlp_proj, head_dim, scale in layers:
        qkv = c_attn(ln_1(hidden))
        heads = qkv.shape[-1] // (3 * head_dim)
        # [tokens, 3d] → per part [rows, heads, tokens, head dim] for q, k, v (GPT-2 splits q | k | v).
        # split, not two slices: a slice's backward writes a zero-filled gradient of the whole input.
        prompt_qkv, done_qkv = qkv.split([n_prompt, qkv.shape[0] - n_prompt])
        p_q, p_k, p_v = prompt_qkv.view(groups, prompt, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attended = [F.scaled_dot_product_attention(p_q, p_k, p_v, attn_mask=prompt_bias, scale=scale)]
        if steps:
            c_q, c_k, c_v = done_qkv.view(rows, steps, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            keys = torch.cat([p_k.repeat_interleave(group, dim=0), c_k], dim=2)
            values = torch.cat([p_v.repeat_interleave(group, dim=0), c_v], dim=2)
            attended.append(F.scaled_dot_product_attention(c_q, keys, values, attn_mask=done_bias, scale=scale))
        # Back to [tokens, d], prompt tokens first, as `hidden` is laid out.
        joined = torch.cat([a.transpose(1, 2).reshape(-1, heads * head_dim) for a in attended])
        hidden = lean_decode._residual(c_proj, joined, hidden)
        hidden = lean_decode._residual(mlp_proj, act(c_fc(ln_2(hidden))), hidden)

    prompt_hidden, done_hidden = hidden.split([n_prompt, hidden.shape[0] - n_prompt])
    last = prompt_hidden.view(groups, prompt, -1)[:, -1]
    first = head(ln_f(last)).repeat_interleave(group, dim=0)[:, None]
    if not steps:
        return [first]
    rest = head(ln_f(done_hidden)).view(rows, steps, -1)
    return [first, rest]
