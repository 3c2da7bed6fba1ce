"""The demo task's WarpRun document: the paper's method at the scale of a laptop CPU.

Choices that differ from the paper's settings (docs/method.md), and why:

- steps 100 per member, batchSize 16 prompts x samplesPerPrompt 4 (leave-one-out baseline):
  one member trains in a minute or two on two cores, and 64 completions per step keep the
  REINFORCE gradient usable for a policy of under a million parameters;
- learningRate 1e-4 with 10 warm-up steps (the paper: 1e-6, 100 steps, for 7B parameters):
  small models need larger steps. At 1e-4 the reward-model score of a member rises steadily over
  all 100 steps (about +0.8 to +2.1 on the bundled build) while KL to the SFT policy reaches about
  4 nats; at 2e-4 it saturates by step 50, leaving SLERP and LiTI little to show;
- beta 0.1 and emaRate 0.01 as in the paper. The EMA's time constant (1/mu = 100 steps) is the
  length of a member's run here, so the anchor trails the policy by a large share of its path:
  enough to keep KL growing slowly instead of collapsing onto the reward model's blind spots;
- maxNewTokens 24 covers over 99% of the grammar's continuations; temperature 0.9 as in the paper;
- iterations 2, policies 2: the smallest run that shows SLERP and iterated LiTI; evaluation on 64
  prompts along the paper's eta grid.
"""

from __future__ import annotations

from typing import Any

RUN_NAME = "sentiment-demo"
RUNS_FOLDER = "runs"

DEMO_STEPS = 100
DEMO_LEARNING_RATE = 1e-4
DEMO_MAX_NEW_TOKENS = 24


def warprun(
    *,
    policy: str,
    reward: str,
    train: str,
    eval: str,
    storage: str,
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS,
    name: str = RUN_NAME,
) -> dict[str, Any]:
    """The demo WarpRun (camelCase, as in YAML) for the given locations."""
    return {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": name},
        "spec": {
            "policy": {"location": policy},
            "reward": {"location": reward},
            "data": {"train": train, "eval": eval, "promptField": "prompt"},
            "warp": {
                "iterations": 2,
                "policies": 2,
                "steps": DEMO_STEPS,
                "beta": 0.1,
                "emaRate": 0.01,
                "anchor": "ema",
                "litiEta": 0.3,
            },
            "training": {
                "batchSize": 16,
                "samplesPerPrompt": 4,
                "baseline": "leave-one-out",
                "learningRate": DEMO_LEARNING_RATE,
                "warmupSteps": 10,
                "maxGradNorm": 1.0,
                "maxPromptTokens": 32,
                "maxNewTokens": max_new_tokens,
                "temperature": 0.9,
                "seed": 0,
                "checkpointInterval": 25,
            },
            "evaluation": {
                "etas": [0.0, 0.1, 0.3, 0.5, 0.8, 1.0],
                "prompts": 64,
                "samplesPerPrompt": 2,
                "batchSize": 64,
            },
            "storage": {"url": storage},
            "resources": {"trainer": {"gpus": 0}, "merger": {"gpus": 0}, "evaluation": {"gpus": 0}},
        },
    }


HEADER = """\
# The bundled demo task: WARP on a tiny sentiment world, sized for a CPU.
# Built by `kwarp task build`; run it with `kwarp run warprun.yaml` from this folder's path.
# Relative locations resolve against this file's folder. The settings and why they differ from
# the paper's are explained in kwarp/tasks/document.py.
"""
