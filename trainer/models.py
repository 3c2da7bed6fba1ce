"""What one WARP member holds and runs on: its models (policy, EMA anchor, θ_init), the optimizer, the accelerator.

trainer/train.py builds these once per member; trainer/step.py's step reads and updates them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kwarp.core.errors import UserError
from kwarp.core.spec import WarpRunSpec
from kwarp.policy import load_causal_lm, load_tokenizer, resolve_dtype, unique_parameters

from . import sharding

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class Models:
    """The weights one member holds. `names[j]` names `params[j]` and `ema[j]` (tied weights once)."""

    policy: Any  # what forward/backward runs through: DDP-wrapped under several processes
    bare: Any  # the policy model itself, for generation and saving
    tokenizer: Any
    names: list[str]
    params: list[torch.Tensor]
    ema: list[torch.Tensor]  # float32; the anchor model's own parameters when anchor = ema
    anchor: Any | None  # computes log π_anchor; None for anchor "none"
    init: Any | None  # θ_init, frozen, for the KL to init; the anchor itself when anchor = sft
    sharded: bool = False  # fsdp: params are DTensors, `ema` holds this process's float32 shards


def load_models(init_dir: Path, spec: WarpRunSpec, device: torch.device, *, kl_to_init: bool) -> Models:
    compute = resolve_dtype(spec.policy.dtype, device)
    trust = spec.policy.trust_remote_code
    tokenizer = load_tokenizer(init_dir, trust)
    policy = load_causal_lm(init_dir, torch.float32, trust, device)
    names = list(unique_parameters(policy))
    named = dict(policy.named_parameters())
    params = [named[n] for n in names]

    def frozen() -> Any:
        return load_causal_lm(init_dir, compute, trust, device).requires_grad_(False)

    anchor: Any | None = None
    if spec.warp.anchor == "ema":
        # The anchor model's float32 weights ARE the EMA: no copy per step, and it runs under autocast.
        anchor = copy.deepcopy(policy).requires_grad_(False)
        anchor_named = dict(anchor.named_parameters())
        ema = [anchor_named[n] for n in names]
    else:
        ema = [p.detach().clone() for p in params]
        if spec.warp.anchor == "sft":
            anchor = frozen()
    init = None
    if kl_to_init:
        init = anchor if spec.warp.anchor == "sft" else frozen()
    return Models(policy, policy, tokenizer, names, params, ema, anchor, init)


def shard_models(models: Models, spec: WarpRunSpec, device: torch.device, world: int) -> Models:
    """spec.training.strategy fsdp: shard the policy, the anchor and θ_init over the member's processes
    (trainer/sharding.py). The EMA becomes this process's shards: the anchor's own when anchor = ema."""
    mesh = sharding.device_mesh(device, world)
    compute = resolve_dtype(spec.policy.dtype, device)
    done: set[int] = set()
    for model in (models.bare, models.anchor, models.init):
        if model is not None and id(model) not in done:
            sharding.shard(model, mesh, compute)
            done.add(id(model))
    named = dict(models.bare.named_parameters())
    params = [named[n] for n in models.names]
    if spec.warp.anchor == "ema":
        anchor_named = dict(models.anchor.named_parameters())
        ema = [sharding.local(anchor_named[n]) for n in models.names]
    else:
        ema = [sharding.local(p).detach().clone() for p in params]
    return dataclasses.replace(models, policy=models.bare, params=params, ema=ema, sharded=True)


def make_optimizer(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam over the float32 parameters, fused: one kernel over every tensor instead of a Python loop
    of ~10 ops per tensor (torch has fused Adam for CPU and CUDA float32; benchmarks/train_step.py)."""
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def make_accelerator(dtype: str, device: str | None) -> Any:
    from accelerate import Accelerator

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    compute = resolve_dtype(dtype, device)
    precision = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[compute]
    return Accelerator(cpu=device == "cpu", mixed_precision=precision)
