"""One WARP member: REINFORCE with an EMA anchor (docs/method.md, stage 1).

    kwarp train --iteration I --member M [--spec warprun.yaml]
    torchrun --standalone --nproc-per-node G --module kwarp train --iteration I --member M   (G processes;
        on a CPU they talk over gloo, so a multi-process member runs and is tested without a GPU)

θ and θ_ema start at θ_init = <run>/iter-I/init (iteration 0: <run>/base). For t = 0 … T−1:

  1. prompts  B prompts at positions t·B … t·B+B−1 of the member's prompt stream: one seeded
              permutation of the training set per epoch (the member's seed is all that differs
              between the members of an iteration)
  2. sample   k completions per prompt from π_θ at temperature τ (KV cache), cut after the first EOS
  3. score    r(x, y) from the reward; log π_anchor(y|x) and log π_init(y|x) without gradient
  4. step     per micro-batch: log π_θ(y|x) with gradient; the shaped reward
              r_β = r − β·(log π_θ − log π_anchor) as a constant; A = r_β minus the mean of the other
              k−1 samples of the same prompt (leave-one-out; or A = r_β with baseline none);
              loss = −mean(A · log π_θ). Clip the gradient norm, Adam (β1 0.9, β2 0.999, ε 1e-8, no
              weight decay) with a linear warm-up, then a constant learning rate. A non-finite loss or
              gradient skips the Adam step and the EMA (guards.py); maxNonFiniteSteps in a row fail
  5. EMA      θ_ema ← (1 − μ)·θ_ema + μ·θ in float32; with anchor = ema it is the next step's anchor
  6. record   one JSON line (metrics.jsonl, Prometheus, a KWARP_PROGRESS line on stdout); every
              checkpointInterval steps, and after a SIGTERM (signals.py), the resumable state is saved
At the end θ_ema is published to member-M/ema, then θ to member-M/final, which marks the member done.
Nothing non-finite is ever published.

Precision: θ is kept in float32 (Adam's updates at lr 1e-6 would vanish in bf16 weights, as the
EMA's would); spec.policy.dtype is the compute dtype (autocast). Final and EMA are saved in
float32 so the task vectors the merger takes are not rounded away. π means softmax(logits / τ),
the distribution that was sampled (see kwarp.policy). Dropout is off throughout.

This file is the run's loop (resume, steps 1 and 6, checkpoints, publishing); steps 2-5 are
trainer/step.py, the models and optimizer they work on trainer/models.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from kwarp.core.errors import UserError
from kwarp.core.ownership import store_key
from kwarp.core.plan import Task
from kwarp.core.spec import WarpRun, member_seed
from kwarp.observability import telemetry
from kwarp.observability.metrics import TrainerMetrics, member_labels
from kwarp.policy import Reward, load_causal_lm, load_reward, read_prompts, resolve_dtype
from kwarp.run.evaluate import eval_settings, evaluate_policy, load_gold
from kwarp.store import Store, layout, open_store
from kwarp.store.fencing import claim_task

from . import sharding
from .guards import (
    NONFINITE_FIELD,
    NonFiniteError,
    NonFiniteGuard,
    check_publishable,
    finite_or_none,
    optimizer_tensors_named,
)
from .launch import note_attempt
from .models import Models, load_models, make_accelerator, make_optimizer, shard_models
from .outputs import Heartbeat, MetricsLog, publish_model
from .reinforce import batch_indices, step_seed
from .signals import StopRequest, Terminated
from .state import Progress, load_state, save_state
from .step import StepConfig, training_step

PROGRESS_PREFIX = "KWARP_PROGRESS "


# ------------------------------------------------------------------------------ outputs of a run


def progress_line(record: dict[str, Any], steps: int) -> str:
    """What the embedded runner parses (live display, metrics): the prefix, then the step record and T.

    An evaluation's per-prompt values stay in metrics.jsonl: they are bulky and no live view uses them.
    """
    ev = record.get("eval")
    if isinstance(ev, dict) and "per_prompt" in ev:
        record = {**record, "eval": {k: v for k, v in ev.items() if k != "per_prompt"}}
    return PROGRESS_PREFIX + json.dumps({"steps": steps, **finite_or_none(record)})


# ------------------------------------------------------------------------------------------ a run


def train(
    run: WarpRun,
    iteration: int,
    member: int,
    *,
    steps: int | None = None,
    device: str | None = None,
    eval_every: int | None = None,
    eval_prompts: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> bool:
    """Train member `member` of iteration `iteration`; False if its final checkpoint already existed."""
    spec, name = run.spec, run.name
    run_folder = store_key(run)  # the run's own folder in the store
    store = open_store(spec.storage.url, spec.storage)
    final_key = layout.member_final(run_folder, iteration, member)
    if store.has_checkpoint(final_key):
        print(f"kwarp train: {final_key} is complete; nothing to do", flush=True)
        return False
    T = steps if steps is not None else spec.warp.steps_for(iteration)
    accelerator = make_accelerator(spec.policy.dtype, device)
    main, world = accelerator.is_main_process, accelerator.num_processes
    # The publishing process (rank 0: the only one that writes to the store) claims the member's lease
    # before it reads any state: an older attempt still running is refused from its next write on, and
    # this one resumes from whatever that one published before (kwarp.store.fencing).
    fence = claim_task(store, run_folder, Task.train(iteration, member).id) if main else None
    # Every process learns the attempt, so that each node's launcher (`kwarp torchrun`) can tell a fenced-out
    # attempt from a failed one when its workers die: torchrun itself turns exit 75 into 1 (trainer/launch.py).
    note_attempt(accelerator, fence, spec.storage.model_dump(mode="json"))
    if spec.training.batch_size % world:
        raise UserError(f"spec.training.batchSize ({spec.training.batch_size}) must divide by the {world} processes")
    per_process = spec.training.batch_size // world
    cfg = StepConfig.from_spec(spec, per_process)
    seed = member_seed(spec, iteration, member)

    init_dir = store.open_checkpoint(layout.init(run_folder, iteration))
    models = load_models(init_dir, spec, accelerator.device, kl_to_init=spec.training.kl_to_init)
    if spec.training.strategy == "fsdp" and world > 1:
        models = shard_models(models, spec, accelerator.device, world)
    if models.sharded and eval_every:
        if main:
            print("kwarp train: trajectory evaluations are skipped under fsdp (they run on one process)", flush=True)
        eval_every = None
    optimizer = make_optimizer(models.params, cfg.learning_rate)
    reward = load_reward(spec.reward, accelerator.device, storage=spec.storage, allow_nonfinite=True)
    prompts = read_prompts(spec.data.train, spec.data.prompt_field, storage=spec.storage, spec_field="spec.data.train")

    state_key = layout.member_state(run_folder, iteration, member)
    log = MetricsLog(store, layout.member_log(run_folder, iteration, member), fence)
    start = 0
    guard = NonFiniteGuard(spec.training.max_non_finite_steps)
    if store.has_checkpoint(state_key):
        loader = sharding.load_sharded_state if models.sharded else load_state
        saved = loader(
            store.open_checkpoint(state_key), names=models.names, policy=models.params, ema=models.ema, optimizer=optimizer
        )
        start = min(saved.step, T)
        guard.restore(saved.extra)
        log.resume(start)
        if main:
            print(f"kwarp train: resuming {name} i{iteration} m{member} at step {start}/{T}", flush=True)
            if saved.world_size != world:
                # Prompt order is global, but each process's share and sampling seed depend on the count.
                print(
                    f"kwarp train: warning: the state was saved by {saved.world_size} process(es), this run has "
                    f"{world}; training continues correctly but will not repeat the interrupted run's samples",
                    flush=True,
                )
    if not models.sharded:  # fully_shard already made the model distributed; prepare would wrap it in DDP
        models.policy, optimizer = accelerator.prepare(models.bare, optimizer)
    if main:
        print(
            f"kwarp train: {name} i{iteration} m{member}: steps {start}..{T}, {spec.training.batch_size} prompts x "
            f"{cfg.samples_per_prompt} samples, anchor {spec.warp.anchor}, {world} process(es) on "
            f"{accelerator.device.type} ({'fsdp' if models.sharded else 'ddp'}), compute {accelerator.mixed_precision}, "
            f"seed {seed}",
            flush=True,
        )

    registry = CollectorRegistry()
    metrics = TrainerMetrics.create(registry)
    namespace = telemetry.task_namespace()
    labels = member_labels(namespace, name, iteration, member)
    metrics.start(labels, T, start)
    exporting = (
        telemetry.export(registry, component="trainer", namespace=namespace, run=name, iteration=iteration, member=member)
        if main
        else nullcontext()
    )
    evaluate = _evaluator(run, iteration, models, reward, store, accelerator, eval_prompts) if eval_every else None

    def whole() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Policy and EMA as whole tensors (gathered from every process when sharded: a collective)."""
        if not models.sharded:
            return models.params, models.ema
        policy = [sharding.gathered(p) for p in models.params]
        return policy, [sharding.gathered(e, like=p) for e, p in zip(models.ema, models.params, strict=True)]

    def save(step: int) -> None:
        policy, ema = whole()
        opt_state = sharding.full_optimizer_state(optimizer) if models.sharded else optimizer
        # Every process holds the same (gathered) weights, so all of them check (and fail) together.
        check_publishable(f"{state_key} at step {step}", {
            "policy": list(zip(models.names, policy, strict=True)),
            "ema": list(zip(models.names, ema, strict=True)),
            "optimizer": optimizer_tensors_named(opt_state, models.names),
        })  # fmt: skip
        if main:
            log.upload()
            progress = Progress(step, T, step * spec.training.batch_size, seed, world, iteration, member, guard.state())
            with store.write_checkpoint(state_key, {"step": step}, fence=fence) as folder:
                save_state(folder, progress, names=models.names, policy=policy, ema=ema, optimizer=opt_state)
        accelerator.wait_for_everyone()

    stop = StopRequest()
    heartbeat = Heartbeat(store, layout.member_heartbeat(run_folder, iteration, member), T, fence=fence)
    with exporting, stop.installed():
        if main:
            heartbeat.beat(start, force=True)  # loaded: the watchdog's clock restarts here
        for step in range(start, T):
            torch.manual_seed(step_seed(seed, step, accelerator.process_index))
            indices = batch_indices(len(prompts), spec.training.batch_size, step, seed)
            mine = indices[accelerator.process_index * per_process : (accelerator.process_index + 1) * per_process]
            record = training_step(models, reward, optimizer, accelerator, [prompts[i] for i in mine], step, cfg)
            record = {"step": step + 1, **record, "time": time.time()}
            if evaluate is not None and ((step + 1) % eval_every == 0 or step + 1 == T):
                record["eval"] = evaluate()
            if main:
                log.append(record)
                metrics.record_step(labels, record)
                print(progress_line(record, T), flush=True)
                heartbeat.beat(step + 1, force=step + 1 == T)
            try:
                guard.observe(step, NONFINITE_FIELD not in record, record)
            except NonFiniteError:
                if main:
                    log.upload()  # the skipped steps, for the report; a resume trims the log to its state
                raise
            saved_now = (step + 1) % spec.training.checkpoint_interval == 0 and step + 1 < T
            if saved_now:
                save(step + 1)
            if on_step is not None:
                on_step(record)
            # SIGTERM (trainer/signals.py): save at this step boundary and leave; at the last step the
            # final checkpoint below is the save.
            if step + 1 < T and stop.agreed(accelerator):
                if not saved_now:
                    save(step + 1)
                if main:
                    print(f"kwarp train: SIGTERM: {name} i{iteration} m{member} saved at step {step + 1}/{T}", flush=True)
                raise Terminated(step + 1, T, saved=True)

        policy, ema = whole()
        for kind, tensors in (("ema", ema), ("final", policy)):
            check_publishable(f"{name} i{iteration} m{member} {kind}", {kind: list(zip(models.names, tensors, strict=True))})
        if main:
            log.upload()
            meta = {"run": name, "iteration": iteration, "member": member, "steps": T, "seed": seed}
            # EMA first: `final` marks the member done, so everything else must exist before it.
            ema_key = layout.member_ema(run_folder, iteration, member)
            publish_model(store, ema_key, models.bare, models.tokenizer, models.names, ema, {**meta, "kind": "ema"}, fence)
            publish_model(
                store, final_key, models.bare, models.tokenizer, models.names, policy, {**meta, "kind": "final"}, fence
            )
            print(f"kwarp train: {name} i{iteration} m{member} done: {final_key}", flush=True)
        accelerator.wait_for_everyone()
    return True


def _evaluator(
    run: WarpRun, iteration: int, models: Models, reward: Reward, store: Store, accelerator: Any, n_prompts: int | None
) -> Callable[[], dict[str, float] | None]:
    """Reward and KL to θ_sft of the current policy on the eval prompts (the main process measures)."""
    spec = run.spec
    frozen_init = models.init if models.init is not None else models.anchor if spec.warp.anchor == "sft" else None
    if iteration == 0 and frozen_init is not None:
        sft = frozen_init  # iteration 0 starts from θ_sft itself
    else:
        compute = resolve_dtype(spec.policy.dtype, accelerator.device)
        sft_dir = store.open_checkpoint(layout.base(store_key(run)))
        sft = load_causal_lm(sft_dir, compute, spec.policy.trust_remote_code, accelerator.device).requires_grad_(False)
    prompts = read_prompts(
        spec.data.eval,
        spec.data.prompt_field,
        storage=spec.storage,
        limit=n_prompts or spec.evaluation.prompts,
        spec_field="spec.data.eval",
    )
    settings = eval_settings(spec)
    gold = load_gold(spec, accelerator.device) if accelerator.is_main_process else None

    def evaluate() -> dict[str, Any] | None:
        point = None
        if accelerator.is_main_process:
            with accelerator.autocast():
                p = evaluate_policy(models.bare, models.tokenizer, sft, reward, prompts, gold=gold, **settings)
            point = {
                "reward": p["reward"],
                "reward_stderr": p["reward_stderr"],
                "kl_sft": p["kl"],
                "kl_sft_stderr": p["kl_stderr"],
                "length": p["length"],
            }
            if gold is not None:
                point.update(gold=p["gold"], gold_stderr=p["gold_stderr"])
            point["per_prompt"] = p["per_prompt"]  # paired comparisons between trajectories (metrics.jsonl only)
        accelerator.wait_for_everyone()
        return point

    return evaluate
