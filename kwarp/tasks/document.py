"""The demo task's WarpRun document: the paper's method at the scale of a laptop CPU.

The settings put the demo in the regime the paper's findings live in (shared docs, method.md, "The
regime"), measured in pilots (docs/reproduction.md, "Pilots"):

- emaRate 0.1 with steps 100: μT = 10, the EMA lags the policy by 1/μ = 10 steps, a tenth of the
  run. The anchor follows the policy, so the KL term slows its rate of change rather than tying it
  to the SFT policy, as in the paper (μ = 0.01, T = 9k: μT ≈ 90). The paper's μ = 0.01 over 100
  steps (μT = 1) left the anchor most of the way to an SFT anchor. WarpRun's own default stays 0.01.
- batchSize 4 prompts x samplesPerPrompt 4 (leave-one-out baseline): of the batch sizes measured
  (4, 8, 16, 32), 4 gives the members' task vectors the largest angle (52° mean over layers, against
  47°, 42° and 31°): members that move apart give SLERP something to recover. It is also the
  cheapest step.
- learningRate 1e-4 with 10 warm-up steps (the paper: 1e-6, 100 steps, for 7B parameters): small
  models need larger steps. The first iteration then ends in the middle of the reward model's
  range (members at 1.5-1.6, between the SFT policy's 0.46 and the 2.4 that a run without KL
  penalty reaches, at 128 nats and a gold reward of -1.8: degenerate text), so later iterations
  and merges have headroom to show;
- beta 0.1 as in the paper;
- maxNewTokens 24 covers over 99% of the grammar's continuations; temperature 0.9 as in the paper;
- iterations 3, policies 2; every front evaluated on 200 prompts x 2 samples along the paper's η
  grid, with the task's hidden gold rule as the gold reward (evaluation.goldReward), so the report
  shows where the reward model is being exploited.
- export klBudget 2: the run ends by exporting the final front's policy with the most reward within
  KL 2 nats of the SFT policy (kwarp export), to export/ in the run's folder of the store.
"""

from __future__ import annotations

from typing import Any

RUN_NAME = "sentiment-demo"
RUNS_FOLDER = "runs"

DEMO_STEPS = 100
DEMO_LEARNING_RATE = 1e-4
DEMO_EMA_RATE = 0.1
DEMO_BATCH_SIZE = 4
GOLD_REWARD = "kwarp.tasks.sentiment:true_score"
DEMO_MAX_NEW_TOKENS = 24
DEMO_KL_BUDGET = 2.0


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
                "iterations": 3,
                "policies": 2,
                "steps": DEMO_STEPS,
                "beta": 0.1,
                "emaRate": DEMO_EMA_RATE,
                "anchor": "ema",
                "litiEta": 0.3,
            },
            "training": {
                "batchSize": DEMO_BATCH_SIZE,
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
                "prompts": 200,
                "samplesPerPrompt": 2,
                "batchSize": 64,
                "goldReward": {"callable": GOLD_REWARD},
            },
            "storage": {"url": storage},
            "resources": {"trainer": {"gpus": 0}, "merger": {"gpus": 0}, "evaluation": {"gpus": 0}},
            # The deliverable: the final front's policy with the most reward within this KL, to export/ in the run's folder.
            "export": {"klBudget": DEMO_KL_BUDGET},
        },
    }


HEADER = """\
# The bundled demo task: WARP on a tiny sentiment world, sized for a CPU.
# Built by `kwarp task build`; run it with `kwarp run warprun.yaml` from this folder's path.
# Relative locations resolve against this file's folder. The settings and why they differ from
# the paper's are explained in kwarp/tasks/document.py.
"""
