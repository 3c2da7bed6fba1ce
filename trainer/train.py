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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from kwarp.core.errors import UserError
from kwarp.core.ownership import store_key
from kwarp.core.spec import WarpRun, WarpRunSpec, member_seed
from kwarp.observability import telemetry
from kwarp.observability.metrics import TrainerMetrics, member_labels
from kwarp.policy import (
    Reward,
    Samples,
    batched_logprobs,
    decode_completions,
    load_causal_lm,
    load_reward,
    load_tokenizer,
    read_prompts,
    resolve_dtype,
    sample,
    sequence_logprobs,
    unique_parameters,
)
from kwarp.run.evaluate import eval_settings, evaluate_policy, load_gold
from kwarp.store import Store, layout, open_store

from . import sharding
from .guards import (
    NONFINITE_FIELD,
    NonFiniteError,
    NonFiniteGuard,
    check_publishable,
    finite_or_none,
    optimizer_tensors_named,
)
from .outputs import Heartbeat, MetricsLog, publish_model
from .reinforce import (
    advantages,
    batch_indices,
    ema_update_,
    reinforce_loss,
    shaped_reward,
    step_seed,
    warmup_lr,
)
from .signals import StopRequest, Terminated
from .state import Progress, load_state, save_state

PROGRESS_PREFIX = "KWARP_PROGRESS "
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class StepConfig:
    samples_per_prompt: int
    micro_batch_prompts: int
    max_new_tokens: int
    max_prompt_tokens: int
    temperature: float
    beta: float
    baseline: str
    ema_rate: float
    learning_rate: float
    warmup_steps: int
    max_grad_norm: float | None
    generation: str = "auto"
    # Run each prompt once per group of its k samples (kwarp.policy._completion_logits). False only in
    # benchmarks/train_step.py's baseline, the trainer before issue 16.
    shared_prompts: bool = True

    @classmethod
    def from_spec(cls, spec: WarpRunSpec, prompts_per_process: int) -> StepConfig:
        tr = spec.training
        return cls(
            samples_per_prompt=tr.samples_per_prompt,
            micro_batch_prompts=min(tr.micro_batch_size or prompts_per_process, prompts_per_process),
            max_new_tokens=tr.max_new_tokens,
            max_prompt_tokens=tr.max_prompt_tokens,
            temperature=tr.temperature,
            beta=spec.warp.beta,
            baseline=tr.baseline,
            ema_rate=spec.warp.ema_rate,
            learning_rate=tr.learning_rate,
            warmup_steps=tr.warmup_steps,
            max_grad_norm=tr.max_grad_norm,
            generation=tr.generation,
        )


@dataclass
class Models:
    """The weights one member holds. `names[j]` names `params[j]` and `ema[j]` (tied weights once)."""

    policy: Any  # what forward/backward runs through: DDP-wrapped under several processes
    bare: Any  # the policy model itself, for generation and saving
    tokenizer: Any
    names: list[str]
    params: list[torch.Tensor]
    ema: list[torch.Tensor]  # float32; the anchor model's own parameters when anchor = ema
    anchor: Any | None  # computes log π_anchor; None for anchor "none"
    init: Any | None  # θ_init, frozen, for the KL to init; the anchor itself when anchor = sft
    sharded: bool = False  # fsdp: params are DTensors, `ema` holds this process's float32 shards


def load_models(init_dir: Path, spec: WarpRunSpec, device: torch.device, *, kl_to_init: bool) -> Models:
    compute = resolve_dtype(spec.policy.dtype, device)
    trust = spec.policy.trust_remote_code
    tokenizer = load_tokenizer(init_dir, trust)
    policy = load_causal_lm(init_dir, torch.float32, trust, device)
    names = list(unique_parameters(policy))
    named = dict(policy.named_parameters())
    params = [named[n] for n in names]

    def frozen() -> Any:
        return load_causal_lm(init_dir, compute, trust, device).requires_grad_(False)

    anchor: Any | None = None
    if spec.warp.anchor == "ema":
        # The anchor model's float32 weights ARE the EMA: no copy per step, and it runs under autocast.
        anchor = copy.deepcopy(policy).requires_grad_(False)
        anchor_named = dict(anchor.named_parameters())
        ema = [anchor_named[n] for n in names]
    else:
        ema = [p.detach().clone() for p in params]
        if spec.warp.anchor == "sft":
            anchor = frozen()
    init = None
    if kl_to_init:
        init = anchor if spec.warp.anchor == "sft" else frozen()
    return Models(policy, policy, tokenizer, names, params, ema, anchor, init)


def shard_models(models: Models, spec: WarpRunSpec, device: torch.device, world: int) -> Models:
    """spec.training.strategy fsdp: shard the policy, the anchor and θ_init over the member's processes
    (trainer/sharding.py). The EMA becomes this process's shards: the anchor's own when anchor = ema."""
    mesh = sharding.device_mesh(device, world)
    compute = resolve_dtype(spec.policy.dtype, device)
    done: set[int] = set()
    for model in (models.bare, models.anchor, models.init):
        if model is not None and id(model) not in done:
            sharding.shard(model, mesh, compute)
            done.add(id(model))
    named = dict(models.bare.named_parameters())
    params = [named[n] for n in models.names]
    if spec.warp.anchor == "ema":
        anchor_named = dict(models.anchor.named_parameters())
        ema = [sharding.local(anchor_named[n]) for n in models.names]
    else:
        ema = [sharding.local(p).detach().clone() for p in params]
    return dataclasses.replace(models, policy=models.bare, params=params, ema=ema, sharded=True)


def make_optimizer(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam over the float32 parameters, fused: one kernel over every tensor instead of a Python loop
    of ~10 ops per tensor (torch has fused Adam for CPU and CUDA float32; benchmarks/train_step.py)."""
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


# ---------------------------------------------------------------------------------------- a step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Time per phase of a step (device work is waited for, so the split is honest).

    The clock is wall time; a benchmark on a shared CPU may pass time.process_time, which other
    processes' load does not inflate.
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _sync(self.device)
        start = self.clock()
        yield
        _sync(self.device)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + self.clock() - start


def training_step(
    models: Models,
    reward: Reward,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    prompts: list[str],
    step: int,
    cfg: StepConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """One REINFORCE step on this process's prompts; returns the step's metrics (all processes).

    `clock` times the phases (record["timing"]); step_seconds is always wall time.
    """
    timer = PhaseTimer(accelerator.device, clock)
    t0 = time.perf_counter()
    samples, rewards = rollout(models, reward, accelerator, prompts, cfg, timer)
    return learn(models, samples, rewards, optimizer, accelerator, step, cfg, timer=timer, started=t0)


def rollout(
    models: Models, reward: Reward, accelerator: Any, prompts: list[str], cfg: StepConfig, timer: PhaseTimer
) -> tuple[Samples, torch.Tensor]:
    """Steps 2-3a: k completions per prompt from π_θ and their rewards."""
    k = cfg.samples_per_prompt
    with timer("generate"), accelerator.autocast():
        samples: Samples = sample(
            models.bare,
            models.tokenizer,
            prompts,
            samples_per_prompt=k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            max_prompt_tokens=cfg.max_prompt_tokens,
            generation=cfg.generation,
            # Sharded: every forward is a collective, so every process generates until all are done.
            synced=models.sharded,
        )
    with timer("score"):
        texts = decode_completions(models.tokenizer, samples)
        rewards = reward.score([p for p in prompts for _ in range(k)], texts).to(accelerator.device)
    return samples, rewards


def _reference_logprobs(model: Any, samples: Samples, cfg: StepConfig, rows: int, group: int) -> torch.Tensor:
    return batched_logprobs(
        model, samples, temperature=cfg.temperature, micro_batch=rows, samples_per_prompt=group
    ).logprob


def learn(
    models: Models,
    samples: Samples,
    rewards: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    step: int,
    cfg: StepConfig,
    *,
    timer: PhaseTimer | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Steps 3b-5 on this process's rows of the batch: reference log-probs, the update, the EMA; the metrics."""
    device = accelerator.device
    k = cfg.samples_per_prompt
    timer = timer or PhaseTimer(device)
    t0 = started if started is not None else time.perf_counter()
    n = samples.completion_ids.shape[0]
    rows = cfg.micro_batch_prompts * k

    # Each prompt's k samples share it: every pass runs the prompt once per group, not k times
    # (kwarp.policy._completion_logits). Sharded models keep one forward per pass: FSDP gathers and
    # frees each block around a forward, and its backward is only tested on one forward per micro-batch.
    group = k if cfg.shared_prompts and not models.sharded else 1
    with timer("reference"), accelerator.autocast():
        logp_anchor = logp_init = None
        if models.anchor is not None:
            logp_anchor = _reference_logprobs(models.anchor, samples, cfg, rows, group)
        if models.init is models.anchor:
            logp_init = logp_anchor
        elif models.init is not None:
            logp_init = _reference_logprobs(models.init, samples, cfg, rows, group)
        if models.sharded:
            for frozen in (models.anchor, models.init):
                sharding.reshard(frozen)

    with timer("train"):
        logps, entropies, loss_total = [], [], 0.0
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            chunk = samples.rows(start, stop)
            # DDP all-reduces gradients once, on the last micro-batch; FSDP reduce-scatters each one
            # into the sharded gradients (holding whole gradients until the last would defeat sharding).
            sync = nullcontext() if stop == n or models.sharded else accelerator.no_sync(models.policy)
            with sync:
                with accelerator.autocast():
                    out = sequence_logprobs(
                        models.policy,
                        chunk.input_ids,
                        chunk.attention_mask,
                        chunk.completion_mask,
                        temperature=cfg.temperature,
                        # kwarp's decode loop measured the entropy while sampling: no second softmax here.
                        with_entropy=chunk.entropy is None,
                        samples_per_prompt=group,
                    )
                anchor_chunk = logp_anchor[start:stop] if logp_anchor is not None else None
                r_beta = shaped_reward(rewards[start:stop], out.logprob.detach(), anchor_chunk, cfg.beta)
                loss = reinforce_loss(out.logprob, advantages(r_beta, k, cfg.baseline), normaliser=n)
                accelerator.backward(loss)
            logps.append(out.logprob.detach())
            entropies.append(out.entropy if chunk.entropy is None else chunk.entropy)
            loss_total += float(loss.detach())
        max_norm = cfg.max_grad_norm or float("inf")
        if models.sharded:
            grad_norm = sharding.clip_grad_norm_(models.params, max_norm)
        else:
            grad_norm = accelerator.clip_grad_norm_(models.params, max_norm)
        lr = warmup_lr(step, cfg.learning_rate, cfg.warmup_steps)
        # The non-finite guard (trainer/guards.py): a nan/inf loss or gradient skips the update.
        # Gradients are all-reduced, so the norm agrees across processes; the loss is local, so the
        # processes agree on the verdict before any of them steps.
        finite = bool(torch.isfinite(grad_norm)) and math.isfinite(loss_total)
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(torch.tensor(float(not finite), device=device), reduction="sum")
            finite = float(bad) == 0.0
        if finite:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with timer("ema"):
        if finite:
            ema_update_(models.ema, [sharding.local(p) for p in models.params], cfg.ema_rate)

    logp = torch.cat(logps).float()
    entropy = torch.cat(entropies).float()  # type: ignore[arg-type]
    zero = torch.zeros((), device=device)
    sums = torch.stack(
        [
            rewards.sum(),
            (rewards**2).sum(),
            torch.tensor(float(n), device=device),
            (logp - logp_anchor.float()).sum() if logp_anchor is not None else zero,
            (logp - logp_init.float()).sum() if logp_init is not None else zero,
            samples.lengths.sum().float(),
            entropy.sum(),
            torch.tensor(loss_total, device=device),
        ]
    )
    sums = accelerator.reduce(sums, reduction="sum").cpu().double()
    total = float(sums[2])
    mean_reward = float(sums[0]) / total
    seconds = time.perf_counter() - t0
    record = {
        "reward": mean_reward,
        "reward_std": max(float(sums[1]) / total - mean_reward**2, 0.0) ** 0.5,
        "kl_anchor": float(sums[3]) / total if logp_anchor is not None else None,
        "kl_init": float(sums[4]) / total if logp_init is not None else None,
        "completion_tokens": float(sums[5]) / total,
        "entropy": float(sums[6]) / total,
        "loss": float(sums[7]) / accelerator.num_processes,
        "grad_norm": float(grad_norm),
        "lr": lr,
        "step_seconds": seconds,
        "tokens_per_second": float(sums[5]) / seconds,
        "timing": timer.seconds,
    }
    return record if finite else {**finite_or_none(record), NONFINITE_FIELD: True}


# ------------------------------------------------------------------------------ outputs of a run


def progress_line(record: dict[str, Any], steps: int) -> str:
    """What the embedded runner parses (live display, metrics): the prefix, then the step record and T.

    An evaluation's per-prompt values stay in metrics.jsonl: they are bulky and no live view uses them.
    """
    ev = record.get("eval")
    if isinstance(ev, dict) and "per_prompt" in ev:
        record = {**record, "eval": {k: v for k, v in ev.items() if k != "per_prompt"}}
    return PROGRESS_PREFIX + json.dumps({"steps": steps, **finite_or_none(record)})


def make_accelerator(dtype: str, device: str | None) -> Any:
    from accelerate import Accelerator

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    compute = resolve_dtype(dtype, device)
    precision = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[compute]
    return Accelerator(cpu=device == "cpu", mixed_precision=precision)


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
    log = MetricsLog(store, layout.member_log(run_folder, iteration, member))
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
            with store.write_checkpoint(state_key, {"step": step}) as folder:
                save_state(folder, progress, names=models.names, policy=policy, ema=ema, optimizer=opt_state)
        accelerator.wait_for_everyone()

    stop = StopRequest()
    heartbeat = Heartbeat(store, layout.member_heartbeat(run_folder, iteration, member), T)
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
            publish_model(store, ema_key, models.bare, models.tokenizer, models.names, ema, {**meta, "kind": "ema"})
            publish_model(store, final_key, models.bare, models.tokenizer, models.names, policy, {**meta, "kind": "final"})
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
