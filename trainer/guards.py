"""What keeps a member's work from silently breaking: the non-finite guard and the publish check.

A step whose loss or gradient is not finite is skipped: no optimiser step, no EMA update, so θ, θ_ema
and Adam's moments stay what they were. Its batch is consumed all the same (the data position is a
function of the step, which keeps a resumed run exact). `NonFiniteGuard` counts such steps and fails
the member after `limit` in a row: by then the cause is not a rare overflow but the reward, the data or
the learning rate. Its counters travel in the saved state, so a resumed member counts on where it was.

Skipping keeps nan out of the weights through the gradient, but not every route to a non-finite weight
(a finite update can still overflow), so everything the trainer publishes — state, ema, final — is
checked first: nothing non-finite ever reaches the store, where retries and the merger would take it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kwarp.core.errors import UserError

NONFINITE_FIELD = "nonfinite"  # metrics.jsonl: true on a skipped step (absent otherwise)


class NonFiniteError(UserError):
    """The member fails: too many non-finite steps in a row, or non-finite values about to be published."""


@dataclass
class NonFiniteGuard:
    limit: int
    streak: int = 0  # skipped steps in a row, up to the last one
    total: int = 0  # skipped steps of this member so far

    def observe(self, step: int, finite: bool, record: Mapping[str, Any]) -> None:
        """Count the outcome of 0-based step `step`; raise NonFiniteError when `limit` are skipped in a row."""
        if finite:
            self.streak = 0
            return
        self.streak += 1
        self.total += 1
        if self.streak >= self.limit:
            first = step + 1 - self.streak + 1
            raise NonFiniteError(
                f"steps {first}..{step + 1}: {self.streak} steps in a row had a non-finite loss or gradient "
                f"(spec.training.maxNonFiniteSteps is {self.limit}; last step: reward {record.get('reward')}, "
                f"loss {record.get('loss')}, grad norm {record.get('grad_norm')}); the member fails with its "
                "last finite state kept. Check that the reward returns finite values, lower "
                "spec.training.learningRate or spec.training.maxGradNorm, or train in float32"
            )

    def state(self) -> dict[str, int]:
        return {"nonfinite_streak": self.streak, "nonfinite_total": self.total}

    def restore(self, extra: Mapping[str, Any]) -> None:
        self.streak = int(extra.get("nonfinite_streak", 0))
        self.total = int(extra.get("nonfinite_total", 0))


def finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """The record with nan/inf numbers as None: metrics.jsonl stays strict JSON (json.dumps writes NaN)."""
    return {key: _finite_or_none(value) for key, value in record.items()}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return finite_or_none(value)
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def finite(t: torch.Tensor) -> bool:
    """No nan or inf in `t`. aminmax propagates nan and exposes ±inf in one pass without a mask the size
    of `t`: about 10x faster than isfinite().all() on the CPU (100M floats, one thread: 19 ms against 196 ms)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def non_finite_names(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[str]:
    """Names of the tensors holding any nan or inf."""
    return [n for n, t in zip(names, tensors, strict=True) if not finite(t)]


def check_publishable(what: str, named: Mapping[str, Sequence[tuple[str, torch.Tensor]]]) -> None:
    """Raise NonFiniteError, naming `what` and the first bad tensors, if any group holds nan or inf."""
    bad = [f"{group} {name}" for group, items in named.items()
           for name in non_finite_names([n for n, _ in items], [t for _, t in items])]  # fmt: skip
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(
            f"refusing to publish {what}: {len(bad)} tensor(s) hold nan or inf ({shown}); the store keeps the "
            "last finite version. Lower spec.training.learningRate or spec.training.maxGradNorm, or train in float32"
        )


def optimizer_tensors_named(
    optimizer: torch.optim.Optimizer | dict[str, Any], names: Sequence[str]
) -> list[tuple[str, torch.Tensor]]:
    """Adam's floating-point state tensors (of the optimiser or its state dict), named "<param>/<field>"
    (what the saved state holds)."""
    out = []
    state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    for index, fields in state["state"].items():
        for key, value in fields.items():
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                out.append((f"{names[index]}/{key}", value))
    return out
