"""The resumable state of one member, as safetensors files plus one JSON document (no pickles).

    policy.safetensors      θ (float32 master weights), by canonical parameter name
    ema.safetensors         θ_ema (float32), same names
    optimizer.safetensors   Adam's per-parameter state flattened as "<param name>/<field>"
                            (exp_avg, exp_avg_sq, step)
    trainer_state.json      step, data position, seeds, world size, Adam's param groups

The folder is published through the store's atomic `write_checkpoint`, so a kill mid-save leaves
the previous state in place. Randomness needs no saved generator state: the trainer re-seeds
torch at the start of every step from (member seed, step, process), so restoring the step
restores the random stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kwarp.core.checkpoints import CheckpointError

STATE_FORMAT = 1
STATE_JSON = "trainer_state.json"
POLICY_FILE = "policy.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass(frozen=True)
class Progress:
    """Where a member stands. `step` counts completed optimiser steps."""

    step: int
    steps: int
    data_position: int
    seed: int
    world_size: int
    iteration: int
    member: int
    extra: dict[str, Any] = field(default_factory=dict)


def optimizer_tensors(
    optimizer: torch.optim.Optimizer | dict[str, Any], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Adam's state (the optimiser or its state dict) as named tensors; `names[j]` names the j-th parameter."""
    state = (optimizer if isinstance(optimizer, dict) else optimizer.state_dict())["state"]
    out: dict[str, torch.Tensor] = {}
    for index, fields in state.items():
        for key, value in fields.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{names[index]}/{key}"] = tensor.detach().cpu().contiguous()
    return out


def optimizer_state_dict(
    tensors: dict[str, torch.Tensor], names: Sequence[str], param_groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """The inverse of optimizer_tensors: a state dict for `optimizer.load_state_dict`."""
    position = {name: j for j, name in enumerate(names)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, field_name = key.rpartition("/")
        if name not in position:
            raise CheckpointError(f"optimizer state names an unknown parameter '{name}'")
        state.setdefault(position[name], {})[field_name] = tensor
    return {"state": state, "param_groups": param_groups}


def save_state(
    folder: Path,
    progress: Progress,
    *,
    names: Sequence[str],
    policy: Sequence[torch.Tensor],
    ema: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
) -> None:
    """Write the state files into `folder` (a staging folder the store publishes). Sharded training
    passes whole tensors and the optimiser's gathered state dict (trainer/sharding.py)."""
    folder = Path(folder)
    save_file({n: t.detach().float().cpu().contiguous() for n, t in zip(names, policy, strict=True)}, folder / POLICY_FILE)
    save_file({n: t.detach().float().cpu().contiguous() for n, t in zip(names, ema, strict=True)}, folder / EMA_FILE)
    save_file(optimizer_tensors(optimizer, names), folder / OPTIMIZER_FILE)
    groups = (optimizer if isinstance(optimizer, dict) else optimizer.state_dict())["param_groups"]
    doc = {"format": STATE_FORMAT, **asdict(progress), "names": list(names), "param_groups": groups}
    (folder / STATE_JSON).write_text(json.dumps(doc, indent=1, sort_keys=True))


def read_state(
    folder: Path, names: Sequence[str]
) -> tuple[Progress, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(progress, policy, ema, optimizer tensors, Adam's param groups) of a saved state, whole tensors by name."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / STATE_JSON).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: unreadable {STATE_JSON} ({err})") from None
    if doc.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder}: state format {doc.get('format')} is not {STATE_FORMAT}")
    if doc["names"] != list(names):
        raise CheckpointError(f"{folder}: the saved state is for another model (parameter names differ)")
    progress = Progress(
        step=doc["step"],
        steps=doc["steps"],
        data_position=doc["data_position"],
        seed=doc["seed"],
        world_size=doc["world_size"],
        iteration=doc["iteration"],
        member=doc["member"],
        extra=doc.get("extra", {}),
    )
    return (progress, load_file(folder / POLICY_FILE), load_file(folder / EMA_FILE),
            load_file(folder / OPTIMIZER_FILE), doc["param_groups"])  # fmt: skip


@torch.no_grad()
def load_state(
    folder: Path,
    *,
    names: Sequence[str],
    policy: Sequence[torch.Tensor],
    ema: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> Progress:
    """Copy a saved state into the live tensors and optimiser; return where training stands."""
    progress, saved_policy, saved_ema, opt_tensors, groups = read_state(folder, names)
    for saved, live in ((saved_policy, policy), (saved_ema, ema)):
        for name, tensor in zip(names, live, strict=True):
            tensor.copy_(saved[name])
    optimizer.load_state_dict(optimizer_state_dict(opt_tensors, names, groups))
    return progress
