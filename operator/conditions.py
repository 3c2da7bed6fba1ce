"""WarpRun condition types and reasons: an API, so they are named constants, set by two small helpers.

    Ready              True once the run Succeeded; False (reason = the phase) while it works or failed
    Suspended          True while spec.suspend holds the run; False once resumed
    Failed             True when a task failed more often than failurePolicy.maxRetries allows
    Invalid            True when the spec does not validate (the message names each bad field), or
                       (reason Forbidden) the operator's guardrails forbid a choice it makes
    SpecChangeRefused  True when a running run's spec changed a field that would alter its results
    StoreUnavailable   True when the run's store cannot be read (credentials, endpoint, Secret missing)
    Pending            True while Jobs of the run wait for Kueue to admit them (the message names the queue)
    PodsStuck          True while a pod of the run cannot start (image pull, missing Secret or ConfigMap):
                       reason = the kubelet's (ImagePullBackOff, CreateContainerConfigError, ...), the
                       message names each pod, its Job and what the kubelet said
    StoreConflict      True when the run's folder in the store holds another run's ownership record
                       (or this run's, made with another spec): nothing there is used or deleted
    StorageNotAllowed  True when spec.storage.url lies outside the operator's allowed prefixes: no Jobs

A condition type appears the first time it is set and stays (False once it no longer holds), so its
lastTransitionTime says when it last flipped. An error a user must act on is always a condition.
"""

from __future__ import annotations

from collections.abc import Sequence

from kwarp.core.status import Condition

# Types
READY = "Ready"
SUSPENDED = "Suspended"
FAILED = "Failed"
INVALID = "Invalid"
SPEC_CHANGE_REFUSED = "SpecChangeRefused"
STORE_UNAVAILABLE = "StoreUnavailable"
PENDING = "Pending"
PODS_STUCK = "PodsStuck"
STORE_CONFLICT = "StoreConflict"
STORAGE_NOT_ALLOWED = "StorageNotAllowed"

# Reasons
SUCCEEDED = "Succeeded"
SUSPENDED_BY_USER = "SuspendedByUser"
RESUMED = "Resumed"
TASK_FAILED = "TaskFailed"
RETRIES_AVAILABLE = "RetriesAvailable"
INVALID_SPEC = "InvalidSpec"
FORBIDDEN = "Forbidden"
VALID_SPEC = "ValidSpec"
UNSAFE_FIELDS_CHANGED = "UnsafeFieldsChanged"
SPEC_ACCEPTED = "SpecAccepted"
STORE_ERROR = "StoreError"
STORE_REACHABLE = "StoreReachable"
WAITING_FOR_ADMISSION = "WaitingForAdmission"
ADMITTED = "Admitted"
PODS_STARTED = "PodsStarted"
# StoreConflict's reasons when True are kwarp.core.ownership's (OwnedByAnotherRun, SpecDigestMismatch, ...)
STORE_OWNED = "StoreOwned"
OUTSIDE_ALLOWED_PREFIXES = "OutsideAllowedPrefixes"
INSIDE_ALLOWED_PREFIXES = "InsideAllowedPrefixes"

TRUE = "True"
FALSE = "False"


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    c = find(conditions, type_)
    return c is not None and c.status == TRUE


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """The list with `type_` set; lastTransitionTime moves only when the status flips. Order is kept."""
    value = TRUE if status else FALSE
    old = find(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def clear_condition(
    conditions: Sequence[Condition],
    type_: str,
    reason: str,
    message: str = "",
    *,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """Set `type_` False if it was ever set; a condition that never held is not added."""
    if find(conditions, type_) is None:
        return list(conditions)
    return set_condition(conditions, type_, False, reason, message, now=now, generation=generation)
