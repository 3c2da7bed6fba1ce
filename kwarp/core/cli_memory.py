"""`kwarp plan-resources FILE`: the bytes per GPU of a member's trainer, for DDP and FSDP (kwarp.core.memory)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from kwarp.core.errors import UserError
from kwarp.core.memory import (
    GIB,
    ROWS,
    SHAPES,
    STRATEGIES,
    ModelShape,
    TrainerLoad,
    fits,
    memory_per_gpu,
    parse_quantity,
)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="WarpRun YAML document")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="size the policy as this published model")
    parser.add_argument("--config", type=Path, help="the policy's config.json (default: read from a local spec.policy)")
    parser.add_argument("--reward-shape", choices=sorted(SHAPES), help="size the reward model as this published model")
    parser.add_argument("--reward-config", type=Path, help="the reward model's config.json")
    parser.add_argument("--gpus", type=int, help="GPUs per node (default: spec.resources.trainer.gpus)")
    parser.add_argument("--nodes", type=int, help="nodes per member (default: spec.resources.trainer.nodes)")
    parser.add_argument("--micro-batch-size", type=int, help="prompts per forward/backward (default: spec.training)")
    parser.add_argument("--gpu-memory", default="80Gi", help="memory of one GPU, e.g. 80Gi, 141G (default 80Gi)")
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table")
    parser.set_defaults(func=_plan_resources)


def _config_of(location: str | None, field: str) -> dict[str, Any] | None:
    """config.json of a local model folder; None for a remote location (nothing is downloaded to plan)."""
    if location is None or location.startswith(("s3://", "hf://")):
        return None
    from kwarp.core import locations

    path = locations.local_path(location, field) / "config.json"
    if not path.is_file():
        raise UserError(f"{field}: {path} does not exist; pass --config or --shape")
    return json.loads(path.read_text())


def _shape(name: str | None, config: Path | None, location: str | None, field: str) -> ModelShape | None:
    """The shape named on the command line, else the one in the spec's local model folder."""
    if name:
        return ModelShape.from_config(SHAPES[name])
    if config:
        return ModelShape.from_config(json.loads(config.read_text()))
    local = _config_of(location, field)
    return ModelShape.from_config(local) if local is not None else None


def _plan_resources(args: argparse.Namespace) -> int:
    from kwarp.core.spec import load

    run = load(args.file)
    spec = run.spec
    policy = _shape(args.shape, args.config, spec.policy.location, "spec.policy.location")
    if policy is None:
        raise UserError(f"spec.policy.location is remote ({spec.policy.location}): pass --config or --shape")
    notes = []
    if spec.reward.callable:
        reward_params = 0
    else:
        reward = _shape(args.reward_shape, args.reward_config, spec.reward.location, "spec.reward.location")
        if reward is None:
            reward, _ = policy, notes.append("reward model sized as the policy (remote; pass --reward-config)")
        reward_params = reward.params
    gpus = args.gpus if args.gpus is not None else spec.resources.trainer.gpus or 1
    nodes = args.nodes if args.nodes is not None else spec.resources.trainer.nodes
    load_ = TrainerLoad.from_spec(spec, processes=gpus * nodes, reward_params=reward_params)
    if args.micro_batch_size:
        load_ = dataclasses.replace(load_, micro_batch_size=args.micro_batch_size)
    gpu_memory = parse_quantity(args.gpu_memory)
    plans = {s: memory_per_gpu(policy, load_, s) for s in STRATEGIES}

    if args.output == "json":
        doc = {"params": policy.params, "processes": load_.processes, "gpuMemory": gpu_memory,
               "strategy": spec.training.strategy, "perGpu": plans,
               "fits": {s: fits(p["total"], gpu_memory) for s, p in plans.items()}}  # fmt: skip
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"{run.name}: policy {policy.params / 1e9:.2f}B parameters, {nodes} node(s) x {gpus} GPU(s) = "
        f"{load_.processes} process(es), compute {load_.compute_bytes} bytes, anchor {load_.anchor}, "
        f"micro-batch {load_.micro_rows} rows x {spec.training.max_prompt_tokens + spec.training.max_new_tokens} tokens"
    )
    print(f"{'GiB per GPU':<14}" + "".join(f"{s:>10}" for s in STRATEGIES))
    for row in (*ROWS, "total"):
        print(f"{row:<14}" + "".join(f"{plans[s][row] / GIB:>10.1f}" for s in STRATEGIES))
    for note in notes:
        print(f"note: {note}")
    for s in STRATEGIES:
        total = plans[s]["total"]
        verdict = "fits" if fits(total, gpu_memory) else "DOES NOT FIT"
        chosen = " <- spec.training.strategy" if s == spec.training.strategy else ""
        print(f"{s}: {total / GIB:.1f} GiB of {gpu_memory / GIB:.1f} GiB per GPU: {verdict} (limit: 90%, "
              f"the rest is the CUDA context and fragmentation){chosen}")  # fmt: skip
    if not fits(plans[spec.training.strategy]["total"], gpu_memory):
        other = [s for s in STRATEGIES if s != spec.training.strategy and fits(plans[s]["total"], gpu_memory)]
        hint = f"; {other[0]} would fit" if other else "; add GPUs or nodes, or lower spec.training.microBatchSize"
        print(f"warning: spec.training.strategy {spec.training.strategy} does not fit{hint}")
    return 0
