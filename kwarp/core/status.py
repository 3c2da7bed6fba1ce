"""The WarpRun status: a typed model, so the CRD declares it (the API server would prune an undeclared status).

The operator builds it; `kwarp crd` derives the status schema from it. Condition types and reasons are
named constants in kwarp.operator.conditions.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kwarp.core.spec import WarpRunSpec


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class Condition(_Model):
    type: str
    status: str = Field(description="True, False or Unknown")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class MemberStatus(_Model):
    iteration: int
    member: int
    job: str | None = Field(None, description=(
        "The member's latest Job (a queued run's iteration: its gang Job <run>-i<k>-members, shared by the "
        "members). Absent until that Job is created: a member is listed, Pending, from the moment its "
        "iteration is reached (iteration 0 while the run prepares); the pass that creates its Job names it"))
    state: str = Field("Pending", description="Pending, Queued (waiting for Kueue), Running, Suspended, Succeeded, Failed")
    attempts: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    reward: float | None = None
    kl: float | None = None
    step: int | None = Field(None, description="Training steps done (as of the member's last upload of its metrics)")
    steps: int | None = Field(None, description="Training steps of the member (T of its iteration)")
    last_reward: float | None = Field(None, description="Training reward at the last step logged")
    last_kl: float | None = Field(None, description="KL to the anchor at the last step logged")


class RunProgress(_Model):
    """As Kubeflow Trainer's TrainJob status: how far the run is and when it should end."""

    summary: str = Field("", description="Training steps done / total and percent, e.g. '4500/36000 (12.5%)'")
    percent: float = 0.0
    steps_done: int = 0
    steps_total: int = 0
    steps_per_second: float | None = Field(None, description="Measured training rate of one member (median)")
    estimated_completion_time: str | None = Field(
        None, description="When training should end at the measured rate (merges and evaluations not counted)"
    )
    updated_at: str | None = Field(None, description="When the store's metrics were last read (bounded rate)")


class ParetoPoint(_Model):
    eta: float
    reward: float
    kl: float
    reward_stderr: float | None = None
    kl_stderr: float | None = None


class IterationFront(_Model):
    iteration: int
    points: list[ParetoPoint] = Field(default_factory=list)


class TaskFailures(_Model):
    count: int = Field(description="Failed attempts of the task")
    reason: str = Field("", description="Why the latest attempt failed")


class ExportStatus(_Model):
    """The exported policy (spec.export): where it is and what it measured (the evaluation's own settings)."""

    location: str = Field(description="Where the policy was written (a Hugging Face folder with its model card)")
    eta: float = Field(description="The LiTI η of the exported policy on the final front")
    kl_budget: float | None = Field(None, description="The KL budget it was chosen within (spec.export.klBudget)")
    reward: float | None = None
    reward_stderr: float | None = None
    kl: float | None = Field(None, description="Measured KL to the SFT policy")
    kl_stderr: float | None = None
    gold: float | None = Field(None, description="Measured gold reward (spec.evaluation.goldReward)")
    gold_stderr: float | None = None
    within_budget: bool | None = Field(None, description="Measured KL <= klBudget + one standard error")


class WarpRunStatus(_Model):
    phase: str | None = Field(None, description="Pending, Training, Merging, Evaluating, Succeeded, Failed, Suspended")
    iteration: int | None = None
    members_done: str | None = Field(None, description="Done/total members of the current iteration, e.g. 1/2")
    reward: float | None = Field(None, description="Reward of the latest front at η = litiEta")
    kl: float | None = Field(None, description="KL to the SFT policy of the latest front at η = litiEta")
    members: list[MemberStatus] = Field(default_factory=list)
    checkpoints: dict[str, str] = Field(default_factory=dict, description="Checkpoint name -> store URL")
    pareto: list[IterationFront] = Field(default_factory=list)
    progress: RunProgress | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    failures: dict[str, TaskFailures] = Field(
        default_factory=dict,
        description="Failed attempts per task id (i0-m1, i0-merge, ...); kept when the Jobs are gone",
    )
    export: ExportStatus | None = Field(None, description="The exported policy, once spec.export is done")
    accepted_spec: WarpRunSpec | None = Field(
        None,
        description="The spec the operator executes: the first valid spec, plus later changes to safe fields "
        "(suspend, failurePolicy, cleanup, resources, queueName)",
    )
