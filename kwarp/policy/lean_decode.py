"""A lean one-token forward for the uncompiled decode loop (`generation: auto` on a CPU).

At the sizes RL samples at on a CPU (a small model, tens of rows, one token per forward), most of
a transformers forward is Python around the arithmetic: the output-capturing and deprecation
wrappers, a fresh 4-D mask built per call, config lookups, and a dynamic cache that concatenates
every layer's keys and values at every token (O(L²) copying over a completion). `LeanDecoder`
runs the same model for the decode steps with none of that:

- the model's own modules do the arithmetic (embeddings, layer norms, projections, MLPs, the
  output head), so fused activations and forward hooks on them still apply; a module of a plain
  torch or transformers type without hooks is called through its forward's own functional call
  (`_direct`): nn.Module.__call__'s hook bookkeeping cost as much as a small projection's product
  (a GPT-2 decode step at the 1k benchmark's shapes, about 30 module calls: 2.8 → 2.2-2.6 ms);
- keys and values go into buffers allocated once per call of the loop, [rows, kv heads, prompt +
  new tokens, head dim], written in place one column per step;
- the padding mask is an additive bias built once (0 where the prompt has a token, the dtype's
  minimum where it is padding, as transformers' eager path does); a column not yet written is never
  read, so no causal mask is needed for a single query;
- attention is written out for one query: softmax(q·Kᵀ·scale + bias)·V in float32 softmax, grouped
  query heads attending to their shared key/value head without copying it.

Exactness: the same logits as `model(...)` with a cache, up to float rounding (the order of a few
reductions differs from SDPA's kernel): tests/test_lean_decode.py holds them to model.forward on
the whole sequence for GPT-2 and Llama with left padding. Supported: GPT-2 (`GPT2LMHeadModel`,
without cross-attention or the eager upcast/reorder variant) and Llama (`LlamaForCausalLM`, full
attention); any other model, a model in training mode, or a sharded one keeps transformers' forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def supports(model: Any) -> bool:
    """Whether `model` can take the lean decode forward (else the loop keeps model(...))."""
    if model.training or any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters()):
        return False
    name, config = type(model).__name__, model.config
    if name == "GPT2LMHeadModel":
        ok = not config.add_cross_attention and not (
            config.reorder_and_upcast_attn and config._attn_implementation == "eager"
        )
    elif name == "LlamaForCausalLM":
        ok = getattr(config, "sliding_window", None) is None and len(model.model.layers) == config.num_hidden_layers
    else:
        return False
    return ok and not _bypassed_hooks(model)


def _layers(model: Any) -> list[tuple[Any, ...]]:
    """Per block, the modules the lean forward calls, in order (looked up once, not per token)."""
    if type(model).__name__ == "GPT2LMHeadModel":
        return [(b.ln_1, b.attn.c_attn, b.attn.c_proj, b.ln_2, b.mlp.c_fc, b.mlp.act, b.mlp.c_proj,
                 b.attn.head_dim, b.attn.scaling) for b in model.transformer.h]
    return [(d.input_layernorm, d.self_attn.q_proj, d.self_attn.k_proj, d.self_attn.v_proj, d.self_attn.o_proj,
             d.post_attention_layernorm, d.mlp, d.self_attn.head_dim, d.self_attn.scaling) for d in model.model.layers]


def _direct(module: Any) -> Any:
    """What calling `module` computes, without nn.Module.__call__ where that is only bookkeeping.

    For a module of exactly one of the types below (a subclass may override forward) with no hooks
    of its own, the functional call its forward makes, with the same arguments: the same result,
    bit for bit. Anything else (a hook to run, another type, a value that is not a module) is
    returned as it is and called as before. Global hooks make `supports` refuse the lean forward.
    """
    from transformers.pytorch_utils import Conv1D

    from kwarp.policy.fused import TanhGELU, tanh_gelu

    if not isinstance(module, torch.nn.Module) or module._forward_hooks or module._forward_pre_hooks:
        return module
    kind = type(module)
    # The parameters are bound once: a LeanDecoder lives for one decode call, in which none is replaced.
    m = module
    if kind is Conv1D:
        # Conv1D.forward flattens leading dimensions around the same addmm; the decode inputs are [rows, d].
        return lambda x, b=m.bias, w=m.weight: torch.addmm(b, x, w) if x.dim() == 2 else m(x)
    if kind is torch.nn.Linear:
        return lambda x, w=m.weight, b=m.bias: F.linear(x, w, b)
    if kind is torch.nn.LayerNorm:
        return lambda x, s=m.normalized_shape, w=m.weight, b=m.bias, e=m.eps: F.layer_norm(x, s, w, b, e)
    if kind is torch.nn.Embedding:
        args = (m.padding_idx, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.sparse)
        return lambda x, w=m.weight: F.embedding(x, w, *args)
    if kind is TanhGELU:
        return tanh_gelu
    return module


def _residual(projection: Any, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """projection(x) + hidden: a block's residual connection, written into the projection's output.

    A direct call's output (`_direct`'s functional call) is a fresh tensor nothing else holds, so the sum
    goes into it in place rather than into a third tensor (the same sum: float addition commutes). With
    grad as well: the product's backward keeps its inputs, not its output. A module is called as a module,
    and one of its hooks may hold its output: that output is left as it is.
    """
    out = projection(x)
    if isinstance(projection, torch.nn.Module):
        return out + hidden
    return out.add_(hidden)


def _called(model: Any) -> set[int]:
    if type(model).__name__ == "GPT2LMHeadModel":
        ends = [model.transformer.wte, model.transformer.wpe, model.transformer.ln_f]
    else:
        ends = [model.model.embed_tokens, model.model.rotary_emb, model.model.norm]
    modules = [m for layer in _layers(model) for m in layer if isinstance(m, torch.nn.Module)]
    return {id(m) for m in [*modules, *ends, model.lm_head, *(m for x in modules for m in x.modules())]}


def _bypassed_hooks(model: Any) -> bool:
    """Whether a forward hook sits on a module the lean forward does not call (a block, an attention, a
    dropout): it would silently not run. Hooks on the modules it calls (the output head, a projection) run."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    called = _called(model)
    return any(
        (m._forward_hooks or m._forward_pre_hooks) and id(m) not in called for m in model.modules() if m is not model
    )


class LeanDecoder:
    """Keys and values of a prompt pass, room for `new_tokens` more, and the one-token forward over them.

    `cache`: the transformers cache the prompt pass filled (one layer per block, keys [rows / group,
    kv heads, P, head dim]: row i of it is the prompt of rows i·group … i·group + group − 1);
    `prompt_mask`: [rows, P], 1 where a prompt token is (left padding 0).
    """

    def __init__(self, model: Any, cache: Any, prompt_mask: torch.Tensor, new_tokens: int, group: int = 1):
        self.model = model
        self.gpt2 = type(model).__name__ == "GPT2LMHeadModel"
        self.layers = [tuple(_direct(m) for m in layer) for layer in _layers(model)]
        body = model.transformer if self.gpt2 else model.model
        self.head = _direct(model.lm_head)
        if self.gpt2:
            self.embed = (_direct(body.wte), _direct(body.wpe))
            self.final_norm = _direct(body.ln_f)
        else:
            self.embed = (_direct(body.embed_tokens),)
            self.final_norm = _direct(body.norm)
        rows, p = prompt_mask.shape
        self.length = p  # columns written so far
        first = cache.layers[0].keys
        # Per layer, keys and values as [rows · kv heads, columns, head dim]: one batched product per
        # layer and step (baddbmm), where a 4-D matmul spends as long again on expanding and reshaping.
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in cache.layers:
            shape = (rows, layer.keys.shape[1], p + new_tokens, layer.keys.shape[3])
            keys, values = first.new_empty(shape), first.new_empty(shape)
            # The prompt pass ran each prompt once for its `group` rows: broadcast, not repeat_interleave + copy.
            for buffer, prefilled in ((keys, layer.keys), (values, layer.values)):
                buffer.view(rows // group, group, *shape[1:])[:, :, :, :p] = prefilled[:, None]
            self.keys.append(keys.view(-1, *shape[2:]))
            self.values.append(values.view(-1, *shape[2:]))
        kv_heads = cache.layers[0].keys.shape[1]
        bias = torch.zeros((rows, kv_heads, 1, p + new_tokens), dtype=first.dtype, device=first.device)
        bias[:, :, 0, :p].masked_fill_((prompt_mask == 0)[:, None], torch.finfo(first.dtype).min)
        self.bias = bias.view(rows * kv_heads, 1, -1)

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits [rows, vocab] of the next token after `token` [rows] at `position` [rows, 1]; appends its keys."""
        column = self.length
        self.length += 1
        return self._gpt2(token, position, column) if self.gpt2 else self._llama(token, position, column)

    def _attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, column: int, scale: float
                ) -> torch.Tensor:
        """One query per row and head: q [rows, heads, dh], k and v [rows, kv heads, dh] of this token."""
        keys, values = self.keys[index], self.values[index]
        rows = q.shape[0]
        # select + copy_: the same write as keys[:, column] = ..., without indexing's Python parsing, and
        # from k's and v's own strides (a reshape first would copy them once more).
        keys.select(1, column).view(k.shape).copy_(k)
        values.select(1, column).view(v.shape).copy_(v)
        end = column + 1
        # Heads j·g … j·g+g−1 share key/value head j (transformers' repeat_kv): g query rows against one
        # key matrix, no copy of it.
        q = q.reshape(keys.shape[0], -1, q.shape[-1])
        scores = torch.baddbmm(self.bias[:, :, :end], q, keys[:, :end].transpose(1, 2), alpha=scale)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.bmm(weights, values[:, :end]).view(rows, -1)

    def _gpt2(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        wte, wpe = self.embed
        hidden = wte(token) + wpe(position[:, 0])
        rows = hidden.shape[0]
        # GPT2Block's arithmetic; its dropouts are identities in eval mode (supports() requires it).
        for index, (ln_1, c_attn, c_proj, ln_2, c_fc, act, mlp_proj, head_dim, scale) in enumerate(self.layers):
            q, k, v = c_attn(ln_1(hidden)).view(rows, 3, -1, head_dim).unbind(1)
            hidden = _residual(c_proj, self._attend(index, q, k, v, column, scale), hidden)
            hidden = _residual(mlp_proj, act(c_fc(ln_2(hidden))), hidden)
        return self.head(self.final_norm(hidden))

    def _llama(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        hidden = self.embed[0](token)[:, None]  # [rows, 1, d]: the rotary embedding wants a sequence axis
        cos, sin = self.model.model.rotary_emb(hidden, position_ids=position)
        rows = hidden.shape[0]
        for index, (norm_1, q_proj, k_proj, v_proj, o_proj, norm_2, mlp, head_dim, scale) in enumerate(self.layers):
            x = norm_1(hidden)
            q = q_proj(x).view(rows, 1, -1, head_dim).transpose(1, 2)
            k = k_proj(x).view(rows, 1, -1, head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            v = v_proj(x).view(rows, -1, head_dim)
            hidden = hidden + o_proj(self._attend(index, q[:, :, 0], k[:, :, 0], v, column, scale))[:, None]
            hidden = hidden + mlp(norm_2(hidden))
        return self.head(self.final_norm(hidden))[:, 0]
