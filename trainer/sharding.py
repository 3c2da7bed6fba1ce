"""FSDP for one member (spec.training.strategy: fsdp), with torch's `fully_shard` (FSDP2).

Why torch's fully_shard rather than accelerate's FSDP plugin: FSDP2 keeps every parameter a DTensor
sharded on dim 0, one tensor per parameter (no flat buffer). WARP's own state can then follow the
parameters shard for shard: the float32 EMA is a list of plain local tensors with exactly the local
parameters' shapes, updated in place after each step with no communication; and the resumable state
stays the trainer's own named safetensors files (gathered on save, re-sharded on load), so a state
saved by DDP, by FSDP or by any process count resumes under any other. accelerate's plugin would
add its launcher configuration and its own checkpoint formats (optimizer state through torch.save).

What is sharded: each transformer block is one FSDP unit, the root (embeddings, head, final norm)
another; the policy, the anchor (with anchor = ema its float32 shards ARE the EMA) and θ_init are
sharded alike, so their log-probs run on sharded copies. Compute runs in the spec's dtype (FSDP's
mixed precision gathers parameters in it) and gradients are reduced in float32.
Every process must make the same forward calls: generation runs with synced processes, and the
trajectory evaluation (main process only) is not offered under fsdp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from kwarp.trainer.state import read_state


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded parameter (a view: in-place updates reach the parameter)."""
    return t.to_local() if isinstance(t, DTensor) else t


def gathered(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """The whole tensor (a collective: every process calls it). A local shard is gathered as `like` is sharded."""
    if isinstance(t, DTensor):
        return t.full_tensor()
    if isinstance(like, DTensor):
        return DTensor.from_local(t, like.device_mesh, like.placements, shape=like.shape, stride=like.stride()).full_tensor()
    return t


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: modules of the classes transformers itself never splits across devices."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in kinds]
    if not blocks:
        raise ValueError(f"{type(model).__name__}: no transformer blocks found (_no_split_modules is empty)")
    return blocks


def shard(model: torch.nn.Module, mesh: Any, compute: torch.dtype) -> torch.nn.Module:
    """fully_shard each block, then the root; parameters become DTensors in place (names unchanged)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=None if compute == torch.float32 else compute, reduce_dtype=torch.float32)
    for block in block_modules(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def reshard(model: Any) -> None:
    """Free a sharded model's gathered parameters. FSDP keeps the root unit gathered after a forward
    without backward (the anchor's and θ_init's): the anchor's would then go stale when the EMA moves
    its shards in place, and would cost the whole root's memory between steps."""
    if hasattr(model, "reshard"):
        model.reshard()


def device_mesh(device: torch.device, world: int) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))


def clip_grad_norm_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The global gradient norm over every shard (clipping to it), as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with every sharded tensor gathered (a collective)."""
    sd = optimizer.state_dict()
    return {
        "state": {i: {k: gathered(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }


@torch.no_grad()
def load_sharded_state(
    folder: Any,
    *,
    names: Sequence[str],
    policy: Sequence[torch.Tensor],
    ema: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> Any:
    """load_state for sharded parameters: each whole saved tensor is cut to this process's shard."""
    from kwarp.trainer.state import optimizer_state_dict

    progress, saved_policy, saved_ema, opt_tensors, groups = read_state(folder, names)

    def shard_of(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return distribute_tensor(full.to(like.dtype), like.device_mesh, like.placements) if isinstance(like, DTensor) else full

    for j, name in enumerate(names):
        local(policy[j]).copy_(local(shard_of(saved_policy[name], policy[j])))
        ema[j].copy_(local(shard_of(saved_ema[name], policy[j])))
    state = optimizer_state_dict(opt_tensors, names, groups)
    for j, fields in state["state"].items():
        for key, value in fields.items():
            if key != "step":
                fields[key] = shard_of(value, policy[j])
    optimizer.load_state_dict(state)
    return progress
