"""A tiny build of the demo task for end-to-end tests: the real builder, minutes cut to seconds.

The build is cached per test session under pytest's base temp folder (one build for all tests
that ask for it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kwarp.tasks.builder import SIZES, build, demo_document

# The builder's tiny size, trained for fewer steps, with shorter answers: enough for tests of the pipeline.
_tiny = SIZES["tiny"]
TINY = dataclasses.replace(_tiny, sizes=dataclasses.replace(_tiny.sizes, eval_prompts=12), sft_steps=40, rm_steps=60,
                           max_new_tokens=8)  # fmt: skip


def build_tiny(folder: Path) -> Path:
    return build(seed=3, out=folder, progress=False, config=TINY)


def tiny_document(task: Path, store: str, *, name: str = "tiny", iterations: int = 2, members: int = 2,
                  steps: int = 6) -> dict[str, Any]:
    """The demo WarpRun at the smallest settings that still exercise every task."""
    doc = demo_document(store_url=store, folder=task)
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["warp"].update(iterations=iterations, policies=members, steps=steps)
    spec["training"].update(batchSize=4, samplesPerPrompt=2, checkpointInterval=2, warmupSteps=1, maxNewTokens=8)
    spec["evaluation"].update(prompts=8, samplesPerPrompt=1, batchSize=8, etas=[0.0, 0.5, 1.0], every=3,
                              trajectoryPrompts=4)
    return doc
