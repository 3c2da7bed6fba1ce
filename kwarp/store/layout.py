"""The storage layout, identical for a local folder and an S3 bucket (docs/internals.md, "Storage layout").

Iterations and members are 0-based. Every key is relative to the store root and '/'-separated.
"""

from __future__ import annotations


def run_prefix(run: str) -> str:
    return f"{run}/"


def spec_json(run: str) -> str:
    """The WarpRun document the run's executor accepted (the store belongs to this spec)."""
    return f"{run}/warprun.json"


def runner_json(run: str) -> str:
    """Start and end of every task attempt of the embedded runner."""
    return f"{run}/runner.json"


def jobs_json(run: str) -> str:
    """The operator's record of the run's Jobs: per attempt, created, admitted by Kueue (and the wait), ended."""
    return f"{run}/jobs.json"


def lease(run: str, task_id: str) -> str:
    """The lease of one task (kwarp.store.fencing): its current attempt's epoch, holder and nonce (JSON).
    `task_id` is the plan's Task.id: prepare, i0-m1, i0-merge, i0-eval, export."""
    return f"{run}/leases/{task_id}.json"


def base(run: str) -> str:
    """θ_sft: the policy the run started from (copied in so a run is self-contained)."""
    return f"{run}/base"


def iteration_prefix(run: str, i: int) -> str:
    return f"{run}/iter-{i}/"


def init(run: str, i: int) -> str:
    """θ_init of iteration i. iter-0/init is not written: iteration 0 starts from base."""
    return base(run) if i == 0 else f"{run}/iter-{i}/init"


def member_prefix(run: str, i: int, m: int) -> str:
    return f"{run}/iter-{i}/member-{m}/"


def member_final(run: str, i: int, m: int) -> str:
    return f"{run}/iter-{i}/member-{m}/final"


def member_ema(run: str, i: int, m: int) -> str:
    """The member's EMA anchor at the end of training (kept for comparison, not merged)."""
    return f"{run}/iter-{i}/member-{m}/ema"


def member_state(run: str, i: int, m: int) -> str:
    """Resumable trainer state: policy, EMA, optimizer, scheduler, RNG, step, data position."""
    return f"{run}/iter-{i}/member-{m}/state"


def member_log(run: str, i: int, m: int) -> str:
    """Per-step metrics of the member, JSONL."""
    return f"{run}/iter-{i}/member-{m}/metrics.jsonl"


def member_heartbeat(run: str, i: int, m: int) -> str:
    """The trainer's last completed step and when (JSON), rewritten as it trains: the operator's progress watchdog."""
    return f"{run}/iter-{i}/member-{m}/heartbeat.json"


def slerp(run: str, i: int) -> str:
    return f"{run}/iter-{i}/slerp"


def merge_report(run: str, i: int) -> str:
    """Angles between task vectors per group, norms, timings of the merge (JSON)."""
    return f"{run}/iter-{i}/merge.json"


def eval_json(run: str, i: int) -> str:
    """Reward and KL(·‖θ_sft) along the LiTI path of iteration i: the Pareto front."""
    return f"{run}/iter-{i}/eval.json"


def export(run: str) -> str:
    """The exported policy when spec.export.to is left out (a Hugging Face folder with its model card)."""
    return f"{run}/export"


def export_json(run: str) -> str:
    """What the export chose and measured (the exported folder's kwarp-export.json); written last."""
    return f"{run}/export.json"


def report_prefix(run: str) -> str:
    return f"{run}/report/"
