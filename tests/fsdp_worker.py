"""`learn` (the trainer's update: reference log-probs, REINFORCE step, EMA) on a fixed global batch.

Run by tests/test_trainer_fsdp.py as one plain process, or by torchrun as several (then the member is
sharded with FSDP, and each process takes its contiguous share of the batch's prompts). It imports
only kwarp: run as a script, its folder (tests/) is first on sys.path, never the repository root
(whose operator/ folder would shadow the standard library's).

    python tests/fsdp_worker.py SPEC_JSON INIT_DIR BATCH_FILE OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kwarp.core.spec import parse
from kwarp.policy import Samples
from kwarp.trainer import sharding
from kwarp.trainer.models import load_models, make_accelerator, make_optimizer, shard_models
from kwarp.trainer.step import StepConfig, learn

FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "rewards")


def main(spec_json: str, init_dir: str, batch_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    spec = parse(json.loads(Path(spec_json).read_text())).spec
    accelerator = make_accelerator("float32", "cpu")
    world, rank = accelerator.num_processes, accelerator.process_index
    models = load_models(Path(init_dir), spec, accelerator.device, kl_to_init=spec.training.kl_to_init)
    if world > 1:
        models = shard_models(models, spec, accelerator.device, world)
    optimizer = make_optimizer(models.params, spec.training.learning_rate)
    cfg = StepConfig.from_spec(spec, spec.training.batch_size // world)

    batch = load_file(batch_file)
    steps = sorted({int(key.split("/")[0]) for key in batch})
    records = []
    for step in steps:
        t = {f: batch[f"{step}/{f}"] for f in FIELDS}
        share = t["rewards"].shape[0] // world
        mine = slice(rank * share, (rank + 1) * share)
        samples = Samples(t["prompt_ids"][mine], t["prompt_mask"][mine], t["completion_ids"][mine], t["completion_mask"][mine])
        record = learn(models, samples, t["rewards"][mine], optimizer, accelerator, step, cfg)
        records.append({k: record[k] for k in ("loss", "grad_norm", "kl_anchor", "kl_init", "entropy", "reward")})

    policy = [sharding.gathered(p) for p in models.params]
    ema = [sharding.gathered(e, like=p) for e, p in zip(models.ema, models.params, strict=True)]
    if accelerator.is_main_process:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"policy/{n}": p.detach().cpu().contiguous() for n, p in zip(models.names, policy, strict=True)}
        tensors.update({f"ema/{n}": e.detach().cpu().contiguous() for n, e in zip(models.names, ema, strict=True)})
        save_file(tensors, out / "weights.safetensors")
        (out / "records.json").write_text(json.dumps({"world": world, "sharded": models.sharded, "records": records}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:5])
