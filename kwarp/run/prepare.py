"""`kwarp prepare`: the first task of a run. Checks the inputs, then copies θ_sft into <run>/base.

Failing here, before any GPU is spent, is the point: a missing model, a pickle-only model, an
unreadable prompt file or a reward callable that does not import stop the run with a message that
names the spec field. Copying θ_sft into the run's store makes a run self-contained: every later
task reads its inputs from the same store, and the report can always find the SFT point.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import time
from pathlib import Path

from kwarp.core import locations
from kwarp.core.checkpoints import MANIFEST, PICKLE_SUFFIXES, CheckpointError, refuse_pickles
from kwarp.core.errors import UserError
from kwarp.core.ownership import store_key
from kwarp.core.plan import Task
from kwarp.core.prompts import read_prompts
from kwarp.core.spec import DataSpec, RewardSpec, WarpRun, from_cli
from kwarp.store import Store, layout, open_store
from kwarp.store.fencing import claim_task


def check_prompts(path: Path, field: str, spec_field: str, need: int = 1) -> int:
    """Count valid prompts in a JSONL file; raise a UserError naming the file and line of a bad one."""
    n = len(read_prompts(path, field, spec_field=spec_field))
    if n < need:
        raise UserError(f"{spec_field}: {path} holds {n} prompts, at least {need} are needed")
    return n


def check_data(run: WarpRun) -> dict[str, int]:
    data: DataSpec = run.spec.data
    storage = run.spec.storage
    train = locations.fetch(data.train, "spec.data.train", storage)
    evals = locations.fetch(data.eval, "spec.data.eval", storage)
    return {
        "train": check_prompts(train, data.prompt_field, "spec.data.train", need=run.spec.training.batch_size),
        "eval": check_prompts(evals, data.prompt_field, "spec.data.eval"),
    }


def check_reward(reward: RewardSpec, storage: object) -> str:
    """Fail before training when a reward (spec.reward, or the gold reward) cannot load; messages name its field."""
    path = reward._path
    if reward.callable is not None:
        module, _, fn = reward.callable.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise UserError(f"{path}.callable: cannot import module '{module}' ({err})") from None
        if not callable(getattr(mod, fn, None)):
            raise UserError(f"{path}.callable: module '{module}' has no function '{fn}'")
        return reward.callable
    assert reward.location is not None
    path_dir = locations.fetch(reward.location, f"{path}.location", storage)  # type: ignore[arg-type]
    try:
        refuse_pickles(path_dir)
    except CheckpointError as err:
        raise UserError(f"{path}.location: {err}") from None
    if not (path_dir / "config.json").is_file():
        raise UserError(f"{path}.location: {path_dir} has no config.json; give a Hugging Face model folder")
    return str(path_dir)


def copy_policy(run: WarpRun, store: Store) -> bool:
    """Publish θ_sft at <run>/base; False when it was already there."""
    key = layout.base(store_key(run))
    if store.has_checkpoint(key):
        return False
    fence = claim_task(store, store_key(run), Task.prepare().id)  # an older attempt's copy is refused from now
    policy = run.spec.policy
    src = locations.fetch(policy.location, "spec.policy.location", run.spec.storage, policy.revision)
    try:
        refuse_pickles(src)
    except CheckpointError as err:
        raise UserError(f"spec.policy.location: {err}") from None
    if not (src / "config.json").is_file():
        raise UserError(f"spec.policy.location: {src} has no config.json; give a Hugging Face model folder")
    if (src / MANIFEST).is_file():
        store.put_checkpoint(src, key, fence=fence)
        return True
    # A plain HF folder: copy only what a model needs (never pickles), then publish with a manifest.
    with store.write_checkpoint(key, meta={"source": policy.location, "created": time.time()}, fence=fence) as tmp:
        for p in sorted(src.iterdir()):
            if p.is_file() and p.suffix not in PICKLE_SUFFIXES and not p.name.startswith("."):
                shutil.copy2(p, tmp / p.name)
    return True


def prepare(run: WarpRun, store: Store | None = None) -> dict[str, object]:
    store = store or open_store(run.spec.storage.url, run.spec.storage)
    counts = check_data(run)
    reward = check_reward(run.spec.reward, run.spec.storage)
    gold = run.spec.evaluation.gold_reward
    gold_source = check_reward(gold, run.spec.storage) if gold is not None else None
    copied = copy_policy(run, store)
    info: dict[str, object] = {"prompts": counts, "reward": reward, "base": layout.base(store_key(run)), "copied": copied}
    if gold_source is not None:
        info["gold_reward"] = gold_source
    return info


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", help="WarpRun file (default: $KWARP_SPEC holds the document as JSON)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run = from_cli(args.spec)
    info = prepare(run)
    print(json.dumps({"task": "prepare", "run": run.name, **info}))
    return 0
