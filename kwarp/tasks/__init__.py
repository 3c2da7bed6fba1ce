"""The bundled demo task: a tiny sentiment world with its own SFT policy and reward model.

    from kwarp.tasks import build, demo_document
    folder = build()                      # cached under $KWARP_CACHE/tasks (default ~/.cache/kwarp)
    document = demo_document()            # the WarpRun, with absolute locations

`kwarp.tasks.sentiment:true_score` is the hidden "gold" rule the reward model was trained to
imitate; it imports no torch, so it serves as a `reward.callable` and in reports. The heavier
names below are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BuildConfig", "ModelSizes", "build", "demo_document", "is_built", "task_dir", "true_score"]


def __getattr__(name: str) -> Any:
    if name == "true_score":
        from kwarp.tasks.sentiment import true_score

        return true_score
    if name in __all__:
        from kwarp.tasks import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'kwarp.tasks' has no attribute '{name}'")
