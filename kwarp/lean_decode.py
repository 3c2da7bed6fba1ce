"""A lean one-token forward for the uncompiled decode loop (`generation: auto` on a CPU).

At the sizes RL samples at on a CPU (a small model, tens of rows, one token per forward), most of
a transformers forward is Python around the arithmetic: the output-capturing and deprecation
wrappers, a fresh 4-D mask built per call, config lookups, and a dynamic cache that concatenates
every layer's keys and values at every token (O(L²) copying over a completion). `LeanDecoder`
runs the same model for the decode steps with none of that:

- the model's own modules do the arithmetic (embeddings, layer norms, projections, MLPs, the
  output head), so fused activations and forward hooks on them still apply;
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


def supports(model: Any) -> bool:
    """Whether `model` can take the lean decode forward (else the loop keeps model(...))."""
    if model.training or any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters()):
        return False
    name, config = type(model).__name__, model.config
    if name == "GPT2LMHeadModel":
        return not config.add_cross_attention and not (
            config.reorder_and_upcast_attn and config._attn_implementation == "eager"
        )
    if name == "LlamaForCausalLM":
        return getattr(config, "sliding_window", None) is None and len(model.model.layers) == config.num_hidden_layers
    return False


class LeanDecoder:
    """Keys and values of a prompt pass, room for `new_tokens` more, and the one-token forward over them.

    `cache`: the transformers cache the prompt pass filled (one layer per block, keys [rows / group,
    kv heads, P, head dim]: row i of it is the prompt of rows i·group … i·group + group − 1);
    `prompt_mask`: [rows, P], 1 where a prompt token is (left padding 0).
    """

    def __init__(self, model: Any, cache: Any, prompt_mask: torch.Tensor, new_tokens: int, group: int = 1):
        self.model = model
        rows, p = prompt_mask.shape
        self.length = p  # columns written so far
        first = cache.layers[0].keys
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in cache.layers:
            shape = (rows, layer.keys.shape[1], p + new_tokens, layer.keys.shape[3])
            keys, values = first.new_empty(shape), first.new_empty(shape)
            # The prompt pass ran each prompt once for its `group` rows: broadcast, not repeat_interleave + copy.
            for buffer, prefilled in ((keys, layer.keys), (values, layer.values)):
                buffer.view(rows // group, group, *shape[1:])[:, :, :, :p] = prefilled[:, None]
            self.keys.append(keys)
            self.values.append(values)
        bias = torch.zeros((rows, 1, 1, p + new_tokens), dtype=first.dtype, device=first.device)
        bias[:, 0, 0, :p].masked_fill_(prompt_mask == 0, torch.finfo(first.dtype).min)
        self.bias = bias
        self.gpt2 = type(model).__name__ == "GPT2LMHeadModel"

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits [rows, vocab] of the next token after `token` [rows] at `position` [rows, 1]; appends its keys."""
        column = self.length
        self.length += 1
        return self._gpt2(token, position, column) if self.gpt2 else self._llama(token, position, column)

    def _attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, column: int, scale: float
                ) -> torch.Tensor:
        """One query per row and head: q [rows, heads, dh], k and v [rows, kv heads, dh] of this token."""
        keys, values = self.keys[index], self.values[index]
        keys[:, :, column] = k
        values[:, :, column] = v
        rows, kv_heads = keys.shape[:2]
        end = column + 1
        # Heads j·g … j·g+g−1 share key/value head j (transformers' repeat_kv): group them, no copy.
        q = q.reshape(rows, kv_heads, -1, q.shape[-1])
        scores = torch.matmul(q, keys[:, :, :end].transpose(2, 3)) * scale + self.bias[..., :end]
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(weights, values[:, :, :end]).reshape(rows, -1)

    def _gpt2(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        body = self.model.transformer
        hidden = body.wte(token) + body.wpe(position[:, 0])
        rows = hidden.shape[0]
        for index, block in enumerate(body.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(hidden)).view(rows, 3, -1, attn.head_dim).unbind(1)
            out = self._attend(index, q, k, v, column, attn.scaling)
            hidden = attn.c_proj(out) + hidden
            hidden = hidden + block.mlp(block.ln_2(hidden))
        return self.model.lm_head(body.ln_f(hidden))

    def _llama(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        body = self.model.model
        hidden = body.embed_tokens(token)[:, None]  # [rows, 1, d]: the rotary embedding wants a sequence axis
        cos, sin = body.rotary_emb(hidden, position_ids=position)
        rows = hidden.shape[0]
        for index, layer in enumerate(body.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            v = attn.v_proj(x).view(rows, -1, attn.head_dim)
            out = self._attend(index, q[:, :, 0], k[:, :, 0], v, column, attn.scaling)
            hidden = hidden + attn.o_proj(out)[:, None]
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(body.norm(hidden))[:, 0]
