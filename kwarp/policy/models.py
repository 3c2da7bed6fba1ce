"""Loading a policy: the spec's dtype and device, the model and tokenizer folders (safetensors only, model code
only when the spec allows it), and copying weights into a loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kwarp.core import locations
from kwarp.core.checkpoints import CheckpointError, refuse_pickles
from kwarp.core.errors import UserError
from kwarp.core.weights import TensorReader

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from kwarp.core.spec import StorageSpec

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
    tanh-GELU activations fused (kwarp.policy.fused: the same function in one kernel)."""
    from transformers import AutoModelForCausalLM

    from kwarp.policy.fused import fuse_activations_

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
