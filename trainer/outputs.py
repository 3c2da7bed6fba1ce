"""What a member publishes: metrics.jsonl and Hugging Face checkpoints (final, ema)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kwarp.core.checkpoints import PICKLE_SUFFIXES
from kwarp.policy import unique_parameters
from kwarp.store import Store, StoreError
from kwarp.store.base import FencedOut
from kwarp.store.fencing import Fence

from .guards import finite_or_none


class MetricsLog:
    """metrics.jsonl: lines kept in memory, uploaded whole with each checkpoint and at the end."""

    def __init__(self, store: Store, key: str, fence: Fence | None = None):
        self.store, self.key, self.fence = store, key, fence
        self.lines: list[str] = []

    def resume(self, step: int) -> None:
        """Keep the lines of the steps the resumed state already holds (a later upload may exist)."""
        data = self.store.get_bytes(self.key) or b""
        self.lines = [ln for ln in data.decode().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]

    def append(self, record: dict[str, Any]) -> None:
        # allow_nan=False: a nan slipping through would make the file unreadable outside Python.
        self.lines.append(json.dumps(finite_or_none(record), sort_keys=True, allow_nan=False))

    def upload(self) -> None:
        data = ("\n".join(self.lines) + "\n").encode() if self.lines else b""
        self.store.put_bytes(self.key, data, fence=self.fence)


def _plain_architecture(folder: Path, model: Any) -> None:
    """fully_shard swaps a model's class for a subclass named FSDP<Class>; save_pretrained records that name
    in config.json's `architectures`. Readers of the checkpoint (the merger, evaluation, users) get the
    model's own class name."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    plain = next(c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
    if config.get("architectures") != [plain]:
        config["architectures"] = [plain]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def publish_model(
    store: Store,
    key: str,
    model: Any,
    tokenizer: Any,
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    meta: dict[str, Any],
    fence: Fence | None = None,
) -> None:
    """`tensors` (named `names`) as a Hugging Face checkpoint of `model`'s architecture, in float32,
    with config and tokenizer, published atomically (refused once a newer attempt holds `fence`'s lease)."""
    state = {n: t.detach().float().cpu() for n, t in zip(names, tensors, strict=True)}
    aliases = {n for group in unique_parameters(model).values() for n in group}
    for name, buffer in model.state_dict().items():  # persistent buffers, if the model has any
        if name not in aliases:
            state[name] = buffer.detach().cpu()
    with store.write_checkpoint(key, meta, fence=fence) as folder:
        model.save_pretrained(folder, state_dict=state)
        _plain_architecture(folder, model)
        tokenizer.save_pretrained(folder)
        for path in folder.iterdir():
            if path.suffix in PICKLE_SUFFIXES:
                path.unlink()


class Heartbeat:
    """heartbeat.json: the last completed step and when, for the operator's progress watchdog
    (failurePolicy.progressDeadlineSeconds, operator/watchdog.py). Rewritten at most every `every`
    seconds, so a fast trainer costs one small PUT per interval (and, fenced, one GET of the lease); a store
    error only skips a beat, but a fenced-out beat stops the attempt: a newer one holds the task's lease."""

    def __init__(self, store: Store, key: str, steps: int, every: float = 30.0, fence: Fence | None = None):
        self.store, self.key, self.steps, self.every, self.fence = store, key, steps, every, fence
        self.last = float("-inf")

    def beat(self, step: int, *, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every:
            return
        try:
            self.store.put_json(self.key, {"step": step, "steps": self.steps, "time": now}, fence=self.fence)
        except FencedOut:
            raise
        except StoreError as err:
            print(f"kwarp train: warning: heartbeat not written ({err})", flush=True)
            return
        self.last = now
