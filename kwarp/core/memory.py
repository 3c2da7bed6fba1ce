"""How many bytes one trainer process holds on its GPU, piece by piece, for DDP and for FSDP.

A pure model (no torch): the shape of the policy (from its config.json) and the spec's training
settings in, one row per piece out. `kwarp plan-resources` prints it; docs/cluster.md quotes it.

What each piece is, per GPU (P parameters, c bytes per element of the compute dtype, S processes
sharing the member = nodes x GPUs per node; DDP replicates, FSDP divides by S):

    policy       θ, float32 master weights (Adam's updates at lr 1e-6 vanish in bf16)   4P  | 4P/S
    gradients    float32                                                                 4P  | 4P/S
    adam         exp_avg and exp_avg_sq, float32                                         8P  | 8P/S
    ema          θ_ema, float32; with anchor = ema the anchor model runs ON these weights 4P  | 4P/S
    anchor       anchor = sft: a frozen copy in the compute dtype (ema/none: nothing more) cP  | cP/S
    init         θ_init for the KL to init (kl_to_init, unless the anchor already is it)  cP  | cP/S
    reward       the reward model, replicated in the compute dtype                        cR  | cR
    buffers      DDP: its gradient buckets (4P) and autocast's compute-dtype weight cache (cP, only when c < 4);
                 FSDP: the root unit (embeddings) gathered for the whole step, two layers gathered
                 (the current one and the prefetched one) and one unsharded gradient being reduced
    activations  the larger of: training (one micro-batch of rows R = micro-batch prompts x k, length
                 L = prompt + completion tokens, stored for backward, plus the completion logits in
                 c and float32), and generation (the KV cache of every row this process samples)

Activations per token and layer of a Llama-style block, SDPA attention (scores not stored):
c·(4H + 2·q + 2·kv + 4I) + 8H (two float32 RMSNorm inputs); a GPT-2 block is the same with I = 4H
and no gate. Not counted: the CUDA context and allocator fragmentation (about 1-3 GiB in practice),
which is why a plan is said to fit only below 90% of the GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp")
GIB = 1024**3
FIT_FRACTION = 0.9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ROWS = ("policy", "gradients", "adam", "ema", "anchor", "init", "reward", "buffers", "activations")


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a decoder-only transformer."""

    layers: int
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    gated: bool  # Llama/Gemma MLP (gate, up, down) rather than GPT-2's (fc, proj)
    positions: int = 0  # learned position embeddings (GPT-2)
    biases: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json (GPT-2 names or Llama/Gemma/Mistral/Qwen names)."""
        if "n_embd" in config:  # GPT-2
            hidden = int(config["n_embd"])
            return cls(
                layers=int(config["n_layer"]), hidden=hidden, vocab=int(config["vocab_size"]),
                heads=int(config["n_head"]), kv_heads=int(config["n_head"]), head_dim=hidden // int(config["n_head"]),
                intermediate=int(config.get("n_inner") or 4 * hidden), tied=bool(config.get("tie_word_embeddings", True)),
                gated=False, positions=int(config["n_positions"]), biases=True,
            )  # fmt: skip
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(
                layers=int(config["num_hidden_layers"]), hidden=hidden, vocab=int(config["vocab_size"]), heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads), intermediate=int(config["intermediate_size"]),
                tied=bool(config.get("tie_word_embeddings", False)), gated=True,
                biases=bool(config.get("attention_bias", False)),
            )  # fmt: skip
        except KeyError as err:
            raise ValueError(f"config.json has no {err}: the memory model reads GPT-2 and Llama-style configs") from None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        attn = h * q + 2 * h * kv + q * h
        mlp = (3 if self.gated else 2) * h * i
        if self.gated:
            norms = 2 * h  # RMSNorm weights
            bias = (q + 2 * kv + h) if self.biases else 0  # q, k, v and o projections
        else:
            norms = 4 * h  # LayerNorm weight and bias, twice
            bias = (q + 2 * kv) + h + i + h
        return attn + mlp + norms + bias

    @property
    def root_params(self) -> int:
        """Everything outside the blocks: embeddings, the output head unless tied, the final norm."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2) + self.positions * self.hidden
        return embed + (self.hidden if self.gated else 2 * self.hidden)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def activation_bytes_per_token_layer(self, c: int) -> int:
        i = self.intermediate
        return c * (4 * self.hidden + 2 * self.q_dim + 2 * self.kv_dim + 4 * i) + 8 * self.hidden


@dataclass(frozen=True)
class TrainerLoad:
    """The spec's settings that size a trainer process."""

    compute_bytes: int  # c: 2 for bfloat16/float16, 4 for float32
    processes: int  # S: nodes x GPUs per node
    batch_size: int  # prompts per optimiser step, over all processes
    samples_per_prompt: int
    micro_batch_size: int | None
    max_prompt_tokens: int
    max_new_tokens: int
    anchor: str  # ema | sft | none
    kl_to_init: bool
    reward_params: int = 0  # 0: a callable reward

    @classmethod
    def from_spec(cls, spec: Any, *, processes: int, reward_params: int) -> TrainerLoad:
        dtype = spec.policy.dtype if spec.policy.dtype != "auto" else "bfloat16"  # auto = bf16 on a GPU
        tr = spec.training
        return cls(
            compute_bytes=DTYPE_BYTES[dtype], processes=processes, batch_size=tr.batch_size,
            samples_per_prompt=tr.samples_per_prompt, micro_batch_size=tr.micro_batch_size,
            max_prompt_tokens=tr.max_prompt_tokens, max_new_tokens=tr.max_new_tokens, anchor=spec.warp.anchor,
            kl_to_init=tr.kl_to_init, reward_params=reward_params,
        )  # fmt: skip

    @property
    def prompts_per_process(self) -> int:
        return max(self.batch_size // self.processes, 1)

    @property
    def micro_rows(self) -> int:
        prompts = min(self.micro_batch_size or self.prompts_per_process, self.prompts_per_process)
        return prompts * self.samples_per_prompt


def memory_per_gpu(shape: ModelShape, load: TrainerLoad, strategy: Strategy) -> dict[str, int]:
    """Bytes per GPU of each piece (ROWS, in order) and their `total`."""
    p, c, s = shape.params, load.compute_bytes, load.processes
    share = s if strategy == "fsdp" else 1
    frozen_copies = {"anchor": int(load.anchor == "sft"), "init": int(load.kl_to_init and load.anchor != "sft")}
    rows = {
        "policy": 4 * p // share,
        "gradients": 4 * p // share,
        "adam": 8 * p // share,
        "ema": 4 * p // share,
        "anchor": frozen_copies["anchor"] * c * p // share,
        "init": frozen_copies["init"] * c * p // share,
        "reward": c * load.reward_params,
    }
    if strategy == "ddp":
        rows["buffers"] = 4 * p + (c * p if c < 4 else 0)
    else:
        unit = max(shape.layer_params, shape.root_params)
        rows["buffers"] = c * shape.root_params + 2 * c * shape.layer_params + 4 * unit
    length = load.max_prompt_tokens + load.max_new_tokens
    rows_train = load.micro_rows
    stored = rows_train * length * shape.layers * shape.activation_bytes_per_token_layer(c)
    logits = rows_train * (load.max_new_tokens + 1) * shape.vocab * (c + 8)
    kv_cache = load.prompts_per_process * load.samples_per_prompt * 2 * shape.layers * shape.kv_dim * length * c
    rows["activations"] = max(stored + logits, kv_cache)
    rows["total"] = sum(rows[name] for name in ROWS)
    return rows


def fits(total: int, gpu_memory: int) -> bool:
    return total <= FIT_FRACTION * gpu_memory


def parse_quantity(text: str) -> int:
    """A Kubernetes-style byte quantity ('80Gi', '141G', '1024') as bytes."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(float(text))


# Published configs of the models the docs' table sizes (config.json values, as on the Hugging Face Hub).
# Gemma has no 70B model: the 70B row uses Llama-2-70B's shape.
SHAPES: dict[str, dict[str, Any]] = {
    "gemma-2b": {"hidden_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
                 "head_dim": 256, "intermediate_size": 16384, "vocab_size": 256000, "tie_word_embeddings": True},
    "gemma-7b": {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
                 "head_dim": 256, "intermediate_size": 24576, "vocab_size": 256000, "tie_word_embeddings": True},
    "llama-2-70b": {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                    "intermediate_size": 28672, "vocab_size": 32000, "tie_word_embeddings": False},
}  # fmt: skip
