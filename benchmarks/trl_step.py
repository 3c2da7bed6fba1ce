"""TRL's RLOOTrainer on the same model, prompts and step shape as benchmarks/train_step.py.

    python benchmarks/train_step.py ... --variants baseline,kwarp,trl     (calls time_trl below)

TRL is not a kwarp dependency: install it beside kwarp to compare (`pip install trl`); without it
the trl variant is skipped with a message. The setting matches kwarp's step as closely as TRL allows:
B prompts × k completions per optimiser step (one generation per step), the same temperature and
completion length, no top-k/top-p, a KL penalty β against a reference model that follows the policy
as an EMA (sync_ref_model, mixup α = μ, every step: WARP's EMA anchor), Adam at the same learning rate,
dropout off. kwarp's step does more than this: it also computes the KL to θ_init (a third model).
Each step is timed by the same clock as kwarp's (a TrainerCallback around every optimiser step), and
by wall time as well.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def available() -> bool:
    return importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None


def time_trl(
    model_dir: Path,
    prompts: list[str],
    reward: Callable[[list[str], list[str]], list[float]],
    *,
    batch: int,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    beta: float,
    ema_rate: float,
    steps: int,
    clock: Callable[[], float],
    device: str,
) -> tuple[list[float], list[float]]:
    """Seconds (by `clock`, and by wall time) of each of `steps` RLOO optimiser steps, after one untimed
    warm-up step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", use_safetensors=True)
    n_prompts = batch * (steps + 1)
    dataset = Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(n_prompts)]})

    def reward_fn(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return list(reward(prompts, completions))

    seconds: list[float] = []
    walls: list[float] = []

    class StepClock(TrainerCallback):
        start = 0.0
        wall = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            StepClock.start, StepClock.wall = clock(), time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            seconds.append(clock() - StepClock.start)
            walls.append(time.perf_counter() - StepClock.wall)

    with tempfile.TemporaryDirectory(prefix="kwarp-trl-") as out:
        config = RLOOConfig(
            output_dir=out,
            per_device_train_batch_size=batch * samples,
            gradient_accumulation_steps=1,
            num_generations=samples,
            steps_per_generation=1,
            max_completion_length=max_new_tokens,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            beta=beta,
            sync_ref_model=True,
            ref_model_mixup_alpha=ema_rate,
            ref_model_sync_steps=1,
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            max_steps=steps + 1,
            num_iterations=1,
            shuffle_dataset=False,
            disable_dropout=True,
            use_cpu=device == "cpu",
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=10**6,
            log_completions=False,
            dataloader_num_workers=0,
        )
        trainer = RLOOTrainer(
            model=model, reward_funcs=reward_fn, args=config, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
    return seconds[1:], walls[1:]  # the first step warms up, as kwarp's does
