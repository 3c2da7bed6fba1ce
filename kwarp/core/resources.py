"""What the pods of a WarpRun's roles get: image, GPUs, nodes, CPU, memory, scheduling, deadlines (spec.resources)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .spec_model import SpecModel

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class Toleration(SpecModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PodResources(SpecModel):
    image: str | None = Field(None, description="Container image; default: the operator's configured worker image")
    gpus: int | None = Field(
        None,
        ge=0,
        le=16,
        description="nvidia.com/gpu per pod; unset = the role's default (trainer 1, evaluation 1, merger 0); "
        "a trainer with more than 1 runs under torchrun, one process per GPU",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Pods per member, each on its own node (trainer only): more than 1 makes a member an Indexed "
        "Job of that many pods that rendezvous through a headless Service, torchrun starting `gpus` processes in each",
    )
    cpu: str | None = Field(None, description="CPU request and limit, e.g. '8'")
    memory: str | None = Field(None, description="Memory request and limit, e.g. '64Gi'")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = None
    service_account_name: str | None = None
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=0,
        le=86400,
        description="Seconds a pod has between SIGTERM (eviction, preemption, deletion) and SIGKILL; a trainer saves "
        "its state at the end of the step it is in, so give it one step plus one save. Unset: trainer 120, "
        "others the Kubernetes default (30)",
    )

    ephemeral_storage: str | None = Field(
        None,
        description="ephemeral-storage request and limit of the pod, e.g. '200Gi' (scratch, caches, logs); "
        "beyond it the kubelet evicts the pod, and the task fails with that reason",
    )
    scratch_size_limit: str | None = Field(
        None,
        description="sizeLimit of the /scratch emptyDir (the S3 checkpoint cache, HOME, TMPDIR), e.g. '100Gi'; "
        "beyond it the kubelet evicts the pod, and the task fails with that reason",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Fail a task's Job that has been active this long (Kubernetes activeDeadlineSeconds; per attempt, "
        "the time a Job is suspended does not count); a retry starts afresh. Unset: no deadline",
    )

    @field_validator("cpu", "memory", "ephemeral_storage", "scratch_size_limit")
    @classmethod
    def _quantity(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not _QUANTITY.match(v):
            raise ValueError(
                f"spec.resources.*.{to_camel(info.field_name)}: '{v}' is not a Kubernetes quantity (e.g. '8', '500m', '64Gi')"
            )
        return v


ROLE_GPUS = {"trainer": 1, "merger": 0, "evaluation": 1}


class ResourcesSpec(SpecModel):
    trainer: PodResources = PodResources()
    merger: PodResources = PodResources()
    evaluation: PodResources = PodResources()

    @model_validator(mode="after")
    def _role_gpus(self) -> ResourcesSpec:
        # A role's GPU count has no schema default, so `trainer: {cpu: "8"}` keeps the trainer's GPU
        # (a default of 0 in the CRD would be filled in by the API server and silently drop it).
        for role, gpus in ROLE_GPUS.items():
            res: PodResources = getattr(self, role)
            if res.gpus is None:
                filled = res.model_copy(update={"gpus": gpus})
                # "gpus" stays out of the fields the run set: the operator's per-role defaults (Helm
                # workers.defaults) may still replace a count the run did not state (operator/jobs.py).
                filled.__pydantic_fields_set__.discard("gpus")
                object.__setattr__(self, role, filled)
        for role in ("merger", "evaluation"):
            if getattr(self, role).nodes != 1:
                raise ValueError(f"spec.resources.{role}.nodes: only the trainer spans several nodes; leave it at 1")
        return self
