"""Tiny random Hugging Face causal LMs for tests, built offline in a temporary folder.

`tiny_gpt2(path)` and `tiny_llama(path)` write a complete kwarp checkpoint (safetensors weights,
config, a character-level tokenizer, MANIFEST.json last) and return its folder. `variant(src, dest,
fn)` derives a checkpoint with changed weights (a WARP member: θ_init plus a task vector).
Every builder is deterministic in its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kwarp.core.weights import iter_tensors, save_pretrained, save_state_dict

_SPECIAL = ("<unk>", "<pad>", "<s>", "</s>")
TOKENIZER_VOCAB = len(_SPECIAL) + (127 - 32)  # special tokens + printable ASCII


def tiny_tokenizer() -> Any:
    """A character-level tokenizer over printable ASCII (99 tokens), built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _save(model: Any, path: Path, dtype: torch.dtype, meta: dict[str, Any]) -> Path:
    model = model.to(dtype).eval()
    save_pretrained(model, Path(path), tokenizer=tiny_tokenizer(), meta=meta)
    return Path(path)


def tiny_gpt2(path: Path, seed: int = 0, dtype: torch.dtype = torch.float32, **cfg: Any) -> Path:
    """A 2-block GPT-2 (hidden 32, vocab 128): names `transformer.h.<i>.*`, tied head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 128,
                "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1, **cfg}
    torch.manual_seed(seed)
    return _save(GPT2LMHeadModel(GPT2Config(**settings)), path, dtype, {"builder": "tiny_gpt2", "seed": seed})


def tiny_llama(path: Path, seed: int = 0, dtype: torch.dtype = torch.float32, **cfg: Any) -> Path:
    """A 2-block Llama (hidden 32, GQA 2/1 heads, vocab 128): names `model.layers.<i>.*`, untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                "num_key_value_heads": 1, "max_position_embeddings": 64, "vocab_size": 128,
                "tie_word_embeddings": False, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1, **cfg}
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(LlamaConfig(**settings)), path, dtype, {"builder": "tiny_llama", "seed": seed})


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint (tests only: tiny models fit in memory)."""
    return {name: t.clone() for name, t in iter_tensors(Path(path))}


def variant(
    src: Path, dest: Path, fn: Callable[[str, torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None
) -> Path:
    """A checkpoint like `src` whose tensor `name` is fn(name, tensor), saved in `dtype` (default: its own)
    for floating-point tensors."""
    state = {
        name: fn(name, t).to(dtype if dtype is not None and t.is_floating_point() else t.dtype).contiguous()
        for name, t in load_state(src).items()
    }
    save_state_dict(state, Path(dest), template=Path(src), meta={"variant_of": str(src)})
    return Path(dest)


def with_task_vector(
    src: Path, dest: Path, delta: Callable[[str, torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None
) -> Path:
    """θ_init + δ, with δ computed in float64 from the name and the float64 tensor of θ_init."""
    return variant(
        src, dest, lambda name, t: t.double() + delta(name, t.double()) if t.is_floating_point() else t, dtype
    )


def perturbed(src: Path, dest: Path, seed: int, scale: float = 1e-2, dtype: torch.dtype | None = None) -> Path:
    """A member: θ_init plus a Gaussian task vector (relative size `scale`), deterministic in seed,
    saved in `dtype` (default: θ_init's; the trainer saves float32)."""
    gen = torch.Generator().manual_seed(seed)

    def delta(name: str, t: torch.Tensor) -> torch.Tensor:
        # The floor keeps biases (zero at init) and norm weights (constant) moving too.
        spread = (t.std() if t.numel() > 1 else 0.0) + 0.02
        return scale * spread * torch.randn(t.shape, generator=gen, dtype=torch.float64)

    return with_task_vector(src, dest, delta, dtype)
