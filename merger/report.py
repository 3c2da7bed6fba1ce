"""The merge report (`merge.json`): angles between task vectors per group, norms, weights, bytes, seconds.

The format is documented in docs/internals.md. Undefined angles (a zero task vector) are JSON null.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kwarp.merger.combination import Combination, Step, angle_deg

REPORT_VERSION = 1


@dataclass(frozen=True)
class GroupReport:
    """One group (a transformer block, a tensor, or the whole model) of the merge."""

    name: str
    tensors: int
    params: int
    norms: tuple[float, ...]  # ‖δ_m‖ per member
    pairwise_angles_deg: tuple[tuple[float | None, ...], ...]  # M×M, diagonal 0
    combination: Combination
    merged_norm: float  # ‖Σ_m w_m δ_m‖

    @classmethod
    def from_gram(
        cls, name: str, tensors: int, params: int, gram: Sequence[Sequence[float]], combination: Combination
    ) -> GroupReport:
        g = [[float(x) for x in row] for row in gram]
        m = len(g)
        norms = tuple(math.sqrt(max(g[i][i], 0.0)) for i in range(m))
        pairwise = tuple(
            tuple(0.0 if i == j else angle_deg(g[i][i], g[j][j], g[i][j]) for j in range(m)) for i in range(m)
        )
        w = combination.weights
        merged_sq = math.fsum(w[i] * w[j] * g[i][j] for i in range(m) for j in range(m))
        return cls(name, tensors, params, norms, pairwise, combination, math.sqrt(max(merged_sq, 0.0)))

    @property
    def angle_deg(self) -> float | None:
        """The group's angle: for M = 2 the angle Ω of the SLERP, for M > 2 the mean pairwise angle."""
        m = len(self.norms)
        angles = [self.pairwise_angles_deg[i][j] for i in range(m) for j in range(i + 1, m)]
        defined = [a for a in angles if a is not None]
        return statistics.fmean(defined) if defined else None

    @property
    def norm_ratio(self) -> float | None:
        """‖merged task vector‖ / mean ‖δ_m‖: about 1 for SLERP of orthogonal vectors, 1/√2 for their average."""
        mean = statistics.fmean(self.norms) if self.norms else 0.0
        return self.merged_norm / mean if mean > 0.0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensors": self.tensors,
            "params": self.params,
            "angle_deg": self.angle_deg,
            "norms": list(self.norms),
            "merged_norm": self.merged_norm,
            "norm_ratio": self.norm_ratio,
            "weights": list(self.combination.weights),
            "init_weight": self.combination.init_weight,
            "steps": [_step_json(s) for s in self.combination.steps],
            "pairwise_angles_deg": [list(row) for row in self.pairwise_angles_deg],
        }


def _step_json(step: Step) -> dict[str, Any]:
    return {"member": step.member, "lambda": step.lam, "angle_deg": step.angle_deg, "fallback": step.fallback}


@dataclass(frozen=True)
class IOStats:
    """Bytes of tensor data: `input_bytes` counts each input once, `bytes_read` every pass over it."""

    input_bytes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def __add__(self, other: IOStats) -> IOStats:
        return IOStats(
            self.input_bytes + other.input_bytes,
            self.bytes_read + other.bytes_read,
            self.bytes_written + other.bytes_written,
            self.seconds + other.seconds,
        )


@dataclass(frozen=True)
class MergeReport:
    method: str
    granularity: str
    members: int
    step_lambdas: tuple[float, ...]
    groups: tuple[GroupReport, ...]
    io: IOStats
    outputs: tuple[dict[str, Any], ...] = ()  # [{"eta", "location"}]
    inputs: dict[str, Any] = field(default_factory=dict)  # {"init", "members": [...]}
    iteration: int | None = None
    eta: float | None = None  # LiTI η of the next θ_init this merge wrote, if any

    def summary(self) -> dict[str, Any]:
        angles = [g.angle_deg for g in self.groups if g.angle_deg is not None]
        ratios = [g.norm_ratio for g in self.groups if g.norm_ratio is not None]
        return {
            "angle_deg": _spread(angles),
            "norm_ratio": _spread(ratios),
            "fallbacks": sum(1 for g in self.groups for s in g.combination.steps if s.fallback is not None),
        }

    def to_json(self) -> dict[str, Any]:
        io = self.io
        total = io.input_bytes + io.bytes_written
        return {
            "version": REPORT_VERSION,
            "iteration": self.iteration,
            "method": self.method,
            "granularity": self.granularity,
            "members": self.members,
            "lambda": self.step_lambdas[-1] if self.step_lambdas else None,
            "step_lambdas": list(self.step_lambdas),
            "eta": self.eta,
            "inputs": self.inputs,
            "outputs": list(self.outputs),
            "groups": [g.to_json() for g in self.groups],
            "summary": self.summary(),
            "bytes": total,
            "input_bytes": io.input_bytes,
            "bytes_read": io.bytes_read,
            "bytes_written": io.bytes_written,
            "seconds": io.seconds,
            "bytes_per_second": total / io.seconds if io.seconds > 0 else None,
        }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
