"""Work that never ends or silently breaks: pods that cannot start, trainers that stopped progressing. Pure.

Pods that cannot start. A pod whose image cannot be pulled or whose container cannot be created (a
Secret or ConfigMap it names is missing) waits forever: its Job stays active, the run says Training,
and nothing fails. `stuck_pods` finds them in the run's pods; the reconcile reports them as the
condition PodsStuck, naming each pod, its Job and the kubelet's message.

Trainers that stopped progressing. The trainer rewrites `<member>/heartbeat.json` ({step, steps, time})
as it completes steps (trainer/train.py, at most every HEARTBEAT_SECONDS). With
`failurePolicy.progressDeadlineSeconds`, `stalled` says when a running trainer Job has shown no step
for longer than that: the last heartbeat, or the Job's start when none is newer (model loading, image
pulls and a heartbeat from an earlier attempt all count against the Job's own start). The reconcile
then fails the Job the way Kubernetes fails one past its deadline (`spec.activeDeadlineSeconds`, so the
Job controller stops its pod with SIGTERM and the trainer saves what it has), with the reason in the
annotation kwarp.dev/stalled, which the failure message quotes. The attempt counts against
failurePolicy.maxRetries like any other.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .jobs import ANNOTATION_STALLED
from .observe import JobView

# Container waiting reasons that do not resolve by waiting (the kubelet keeps retrying the same thing).
STUCK_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError",
})  # fmt: skip
NO_PROGRESS = "NoProgress"  # failure reason of a Job the watchdog stopped
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class StuckPod:
    pod: str
    job: str
    container: str
    reason: str
    message: str

    def describe(self) -> str:
        text = f"pod {self.pod} (Job {self.job}, container {self.container}): {self.reason}"
        if self.message:
            message = self.message if len(self.message) <= _MESSAGE_LIMIT else self.message[: _MESSAGE_LIMIT - 1] + "…"
            text += f": {message}"
        return text


def stuck_pods(pods: Iterable[Mapping[str, Any]], jobs: Iterable[str]) -> list[StuckPod]:
    """The pods of the named (active) Jobs whose containers wait for something that will not come."""
    active = set(jobs)
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        job = (meta.get("labels") or {}).get("job-name", "")
        if job not in active or meta.get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                out.append(StuckPod(meta.get("name", ""), job, cs.get("name", ""), waiting["reason"],
                                    (waiting.get("message") or "").strip()))  # fmt: skip
                break
    return sorted(out, key=lambda p: p.pod)


def stuck_condition(stuck: list[StuckPod]) -> tuple[str, str]:
    """(reason, message) of the PodsStuck condition: the first pod's kubelet reason, every pod named."""
    return stuck[0].reason, "; ".join(p.describe() for p in stuck)


@dataclass(frozen=True)
class Heartbeat:
    step: int
    steps: int
    time: float  # Unix seconds on the trainer's clock

    @classmethod
    def parse(cls, doc: Any) -> Heartbeat | None:
        """A heartbeat.json document, or None if it is missing or not one (a torn or foreign file)."""
        if not isinstance(doc, Mapping):
            return None
        try:
            return cls(int(doc["step"]), int(doc["steps"]), float(doc["time"]))
        except (KeyError, TypeError, ValueError):
            return None


def parse_time(value: str) -> float:
    """RFC 3339 (as the API server writes times) -> Unix seconds."""
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stalled(job: JobView, heartbeat: Heartbeat | None, now: float, deadline: int) -> str | None:
    """Why a running trainer Job counts as stuck, or None while it progresses (or is not running)."""
    if job.task.kind != "train" or job.state != "Running" or not job.start_time:
        return None
    started = parse_time(job.start_time)
    last = max(started, heartbeat.time) if heartbeat is not None else started
    idle = now - last
    if idle <= deadline:
        return None
    if heartbeat is not None and heartbeat.time >= started:
        since = f"its last step was {heartbeat.step}/{heartbeat.steps} at {_rfc3339(heartbeat.time)}"
    else:
        since = f"it has completed no step since the Job started at {job.start_time}"
    return (
        f"{NO_PROGRESS}: no training progress for {int(idle)} s (failurePolicy.progressDeadlineSeconds is "
        f"{deadline}); {since}. Look at the pod's log; raise the deadline if a step or model loading takes longer"
    )


def fail_patch(reason: str) -> dict[str, Any]:
    """The merge patch that fails a Job now: the reason as an annotation, a deadline already passed."""
    return {"metadata": {"annotations": {ANNOTATION_STALLED: reason}}, "spec": {"activeDeadlineSeconds": 1}}
