"""Reward and KL to θ_sft of policies, and the Pareto front of an iteration (`kwarp eval`).

A point is measured on the first N evaluation prompts with samples y ~ π(·|x) at the training
temperature:

    reward = mean r(x, y)                      KL = mean [log π(y|x) − log π_sft(y|x)]

each with its standard error (std / √n). Every point uses the same seed, so all of them see the
same prompts and common random numbers, which makes differences between points less noisy than
the points themselves. The KL is the Monte-Carlo estimate of KL(π ‖ π_sft) at sequence level.

With spec.evaluation.goldReward (a held-out judge, never trained on) every point also carries
`gold` and `gold_stderr`, measured on the very same completions. Every point keeps its per-prompt
means (`per_prompt`: reward, kl and gold, one value per prompt in prompt order, each the mean over
that prompt's samples), so any two points can be compared paired, prompt by prompt, and
bootstrapped over prompts (kwarp.run.stats).

Precision: the policies on the front are held in float32 and run under autocast when the compute
dtype is lower (bf16 on a GPU). At small η the step from θ_sft is below bf16's resolution for many
weights: rounding θ_η to bf16 would evaluate θ_sft instead.

Task mode, `kwarp eval --iteration I [--spec FILE]`: walks the LiTI path
θ_η = (1 − η)·θ_sft + η·θ_slerp,I over spec.evaluation.etas (one model whose parameters are
overwritten per η), then each member's final policy, θ_init(I) and θ_init(I+1) when it exists,
and writes <run>/iter-I/eval.json last (its existence marks the task done).

Tool mode, `kwarp eval --model DIR --sft DIR --reward R --prompts FILE`: one point, printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from kwarp.core.ownership import store_key
from kwarp.policy import (
    Reward,
    batched_logprobs,
    copy_weights_,
    decode_completions,
    default_device,
    load_causal_lm,
    load_reward,
    load_tokenizer,
    mean_and_stderr,
    read_prompts,
    resolve_dtype,
    sample,
    unique_parameters,
)

POINT_FIELDS = ("reward", "reward_stderr", "kl", "kl_stderr", "gold", "gold_stderr", "length", "per_prompt")


@torch.no_grad()
def evaluate_policy(
    model: Any,
    tokenizer: Any,
    sft_model: Any,
    reward: Reward,
    prompts: list[str],
    *,
    samples: int = 1,
    max_new_tokens: int,
    temperature: float,
    seed: int = 0,
    batch_size: int = 32,
    max_prompt_tokens: int | None = None,
    gold: Reward | None = None,
    compute_dtype: torch.dtype | None = None,
    generation: str = "auto",
) -> dict[str, Any]:
    """{reward, reward_stderr, kl, kl_stderr, length[, gold, gold_stderr], per_prompt} of `model` on `prompts`.

    KL is to `sft_model`. `gold` is scored on the same completions. `compute_dtype` below float32
    runs the models under autocast (their weights stay as loaded). The global RNG is forked:
    evaluating inside a training loop leaves the trainer's RNG untouched. `generation` picks the
    decode loop (kwarp.policy.generation; the run's spec.training.generation), which changes which
    completions a seed draws, never their distribution. Both log-probs of the KL come from the same
    computation (each prompt once per group of samples), so a point whose policy is θ_sft measures
    KL 0 exactly.
    """
    device = next(model.parameters()).device
    rewards, golds, kls, lengths = [], [], [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type), autocast(
        device, compute_dtype
    ):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            drawn = sample(
                model,
                tokenizer,
                batch,
                samples_per_prompt=samples,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                max_prompt_tokens=max_prompt_tokens,
                generation=generation,
            )
            texts = decode_completions(tokenizer, drawn)
            repeated = [p for p in batch for _ in range(samples)]
            rewards.append(reward.score(repeated, texts))
            if gold is not None:
                golds.append(gold.score(repeated, texts))
            rows = drawn.completion_ids.shape[0]
            logp, logp_sft = (
                batched_logprobs(m, drawn, temperature=temperature, micro_batch=rows, samples_per_prompt=samples).logprob
                for m in (model, sft_model)
            )
            kls.append((logp - logp_sft).float().cpu())
            lengths.append(drawn.lengths.float().cpu())
    values = {"reward": torch.cat(rewards), "kl": torch.cat(kls)}
    if gold is not None:
        values["gold"] = torch.cat(golds)
    out: dict[str, Any] = {}
    for key, v in values.items():
        out[key], out[f"{key}_stderr"] = mean_and_stderr(v)
    out["length"] = float(torch.cat(lengths).mean())
    # Rows are prompt-major (k adjacent samples per prompt): one mean per prompt, in prompt order.
    out["per_prompt"] = {key: per_prompt_means(v, samples) for key, v in values.items()}
    return out


def per_prompt_means(values: torch.Tensor, samples: int) -> list[float]:
    """The mean of each prompt's `samples` adjacent values, rounded to 5 decimals (enough for any
    difference of interest; keeps eval.json small)."""
    means = values.double().reshape(-1, samples).mean(dim=1)
    return [round(float(x), 5) for x in means]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to `dtype` on the device when it is a lower precision; a no-op for float32 or None."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def interpolate_(model: torch.nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], eta: float) -> None:
    """Set every parameter to (1 − η)·start + η·end, computed in float32 (η = 0 and η = 1 are exact)."""
    params = dict(model.named_parameters())
    for name in unique_parameters(model):
        params[name].copy_(torch.lerp(start[name].float(), end[name].float(), eta))


# ------------------------------------------------------------------------------------ task mode


def eval_settings(spec: Any) -> dict[str, Any]:
    ev, tr = spec.evaluation, spec.training
    return {
        "samples": ev.samples_per_prompt,
        "max_new_tokens": ev.max_new_tokens or tr.max_new_tokens,
        "temperature": ev.temperature or tr.temperature,
        # One fixed seed for the whole front: common random numbers across its points.
        "seed": tr.seed,
        "batch_size": ev.batch_size,
        "max_prompt_tokens": tr.max_prompt_tokens,
        "generation": tr.generation,
    }


def evaluate_iteration(run: Any, iteration: int, *, device: str | torch.device | None = None) -> dict[str, Any] | None:
    """Write eval.json of one iteration (the LiTI front, members, init, next init); None if it exists."""
    from prometheus_client import CollectorRegistry

    from kwarp.core.ownership import store_key
    from kwarp.core.plan import Task
    from kwarp.observability import telemetry
    from kwarp.observability.metrics import EvaluationMetrics, iteration_labels
    from kwarp.store import layout, open_store
    from kwarp.store.fencing import claim_task

    spec, name = run.spec, run.name
    folder = store_key(run)  # the run's own folder in the store
    store = open_store(spec.storage.url, spec.storage)
    out_key = layout.eval_json(folder, iteration)
    if store.exists(out_key):
        print(f"kwarp eval: {out_key} exists; nothing to do")
        return None
    fence = claim_task(store, folder, Task.eval(iteration).id)  # an older attempt's eval.json is refused from now
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    compute = resolve_dtype(spec.policy.dtype, device)
    trust = spec.policy.trust_remote_code
    sft_dir = store.open_checkpoint(layout.base(folder))
    slerp_dir = store.open_checkpoint(layout.slerp(folder, iteration))
    tokenizer = load_tokenizer(sft_dir, trust)
    # float32 weights, compute under autocast: θ_η at small η must not round back to θ_sft.
    sft = load_causal_lm(sft_dir, torch.float32, trust, device)
    work = load_causal_lm(sft_dir, torch.float32, trust, device)
    reward = load_reward(spec.reward, device, storage=spec.storage, batch_size=spec.evaluation.batch_size)
    gold = load_gold(spec, device)
    prompts = read_prompts(
        spec.data.eval, spec.data.prompt_field, storage=spec.storage, limit=spec.evaluation.prompts,
        spec_field="spec.data.eval",
    )
    settings = eval_settings(spec)

    def measure(what: str) -> dict[str, Any]:
        started = time.perf_counter()
        point = evaluate_policy(work, tokenizer, sft, reward, prompts, gold=gold, compute_dtype=compute, **settings)
        print(f"kwarp eval: {what}: {describe(point)} ({time.perf_counter() - started:.1f}s)", flush=True)
        return point

    registry = CollectorRegistry()
    metrics = EvaluationMetrics.create(registry)
    namespace = telemetry.task_namespace()
    labels = iteration_labels(namespace, name, iteration)
    with telemetry.export(registry, component="eval", namespace=namespace, run=name, iteration=iteration):
        sft_params = {n: p.detach() for n, p in sft.named_parameters()}
        slerp_params = _load_params(work, slerp_dir, device)
        front = []
        for eta in spec.evaluation.etas:
            interpolate_(work, sft_params, slerp_params, eta)
            point = measure(f"η={eta:g}")
            front.append({"eta": eta, **point})
            metrics.record_point(labels, eta, point["reward"], point["kl"])
        del slerp_params

        members = []
        for m in range(spec.warp.policies):
            copy_weights_(work, store.open_checkpoint(layout.member_final(folder, iteration, m)))
            members.append({"member": m, **measure(f"member {m}")})

        # Iteration 0 starts from θ_sft itself: its init point is the η = 0 point of the front.
        if iteration == 0 and front[0]["eta"] == 0.0:
            init_point = {k: front[0][k] for k in POINT_FIELDS if k in front[0]}
        else:
            if iteration == 0:
                interpolate_(work, sft_params, sft_params, 0.0)
            else:
                copy_weights_(work, store.open_checkpoint(layout.init(folder, iteration)))
            init_point = measure("init")
        next_init = None
        if iteration + 1 < spec.warp.iterations and store.has_checkpoint(layout.init(folder, iteration + 1)):
            copy_weights_(work, store.open_checkpoint(layout.init(folder, iteration + 1)))
            next_init = measure("next init")

        seconds = time.perf_counter() - t0
        metrics.duration.labels(**labels).set(seconds)
    result = {
        "iteration": iteration,
        "reference": "sft",
        "etas": list(spec.evaluation.etas),
        "front": front,
        "members": members,
        "init": init_point,
        "next_init": next_init,
        "prompts": len(prompts),
        "samples": settings["samples"],
        "temperature": settings["temperature"],
        "max_new_tokens": settings["max_new_tokens"],
        "seed": settings["seed"],
        "seconds": seconds,
    }
    store.put_json(out_key, result, fence=fence)  # last: its existence marks the evaluation done
    return result


def evaluate_checkpoint(run: Any, folder: Path, *, device: str | torch.device | None = None) -> dict[str, Any]:
    """One point for a policy folder, measured exactly as the run's fronts are: the same prompts,
    seed, samples, temperature, reward, gold reward and θ_sft (the run's base), so it compares paired
    with every point of eval.json (`kwarp export` confirms its chosen policy with it)."""
    from kwarp.store import layout, open_store

    spec = run.spec
    store = open_store(spec.storage.url, spec.storage)
    device = torch.device(device) if device is not None else default_device()
    trust = spec.policy.trust_remote_code
    sft_dir = store.open_checkpoint(layout.base(store_key(run)))
    tokenizer = load_tokenizer(sft_dir, trust)
    sft = load_causal_lm(sft_dir, torch.float32, trust, device)
    # Loaded in float32 like the front's policies: what the folder stores, without a second rounding.
    policy = load_causal_lm(folder, torch.float32, trust, device, field="the exported policy")
    reward = load_reward(spec.reward, device, storage=spec.storage, batch_size=spec.evaluation.batch_size)
    prompts = read_prompts(
        spec.data.eval, spec.data.prompt_field, storage=spec.storage, limit=spec.evaluation.prompts,
        spec_field="spec.data.eval",
    )
    return evaluate_policy(policy, tokenizer, sft, reward, prompts, gold=load_gold(spec, device),
                           compute_dtype=resolve_dtype(spec.policy.dtype, device), **eval_settings(spec))


def load_gold(spec: Any, device: str | torch.device) -> Reward | None:
    """The spec's gold reward (spec.evaluation.goldReward), if any."""
    gold = spec.evaluation.gold_reward
    if gold is None:
        return None
    return load_reward(gold, device, storage=spec.storage, batch_size=spec.evaluation.batch_size)


def describe(point: dict[str, Any]) -> str:
    """One line: reward, gold (when measured) and KL with their standard errors."""
    text = f"reward {point['reward']:.4f} ± {point['reward_stderr']:.4f}"
    if point.get("gold") is not None:
        text += f", gold {point['gold']:.4f} ± {point['gold_stderr']:.4f}"
    return text + f", KL {point['kl']:.4f} ± {point['kl_stderr']:.4f}"


def _load_params(model: torch.nn.Module, folder: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for each of the model's parameters, on the device."""
    from kwarp.core.checkpoints import CheckpointError
    from kwarp.core.weights import TensorReader

    out = {}
    with TensorReader(folder) as reader:
        present = set(reader.names())
        for canonical, names in unique_parameters(model).items():
            stored = next((n for n in names if n in present), None)
            if stored is None:
                raise CheckpointError(f"{folder}: parameter '{canonical}' is missing")
            out[canonical] = reader.get(stored).to(device)
    return out


# ------------------------------------------------------------------------------------ tool mode


def _reward_spec(value: str, gold: bool = False) -> Any:
    """A reward given on the command line: a model folder, or module:function when no such folder exists."""
    from kwarp.core.spec import GoldRewardSpec, RewardSpec

    kind = GoldRewardSpec if gold else RewardSpec
    is_callable = ":" in value and not Path(value).exists()
    return kind(**({"callable": value} if is_callable else {"location": value}))


def evaluate_folders(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Tool mode: each --model, or with --etas its LiTI path (1 − η)·θ_sft + η·θ_model, as JSON-able dicts.

    All models and η share one loaded θ_sft, reward and gold, and the same seed and prompts, so
    their points compare paired, like the points of one front.
    """
    device = torch.device(args.device) if args.device else default_device()
    compute = resolve_dtype(args.dtype, device)
    sft_dir = Path(args.sft)
    tokenizer = load_tokenizer(sft_dir, args.trust_remote_code, field="--sft")
    sft = load_causal_lm(sft_dir, torch.float32, args.trust_remote_code, device, field="--sft")
    work = load_causal_lm(sft_dir, torch.float32, args.trust_remote_code, device, field="--sft")
    reward = load_reward(_reward_spec(args.reward), device, batch_size=args.batch_size)
    gold = load_reward(_reward_spec(args.gold, gold=True), device, batch_size=args.batch_size) if args.gold else None
    prompts = read_prompts(args.prompts, args.prompt_field, limit=args.num_prompts, spec_field="--prompts")
    settings = {
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "max_prompt_tokens": args.max_prompt_tokens,
    }
    sft_params = {n: p.detach().clone() for n, p in sft.named_parameters()}
    out = []
    for folder in args.model:
        model_dir = Path(folder)
        load_tokenizer(model_dir, args.trust_remote_code, field="--model")  # the same checks as a policy
        if args.etas is None:
            copy_weights_(work, model_dir)
            out.append({"model": str(model_dir), **evaluate_policy(work, tokenizer, sft, reward, prompts, gold=gold,
                                                                   compute_dtype=compute, **settings)})
            continue
        target = _load_params(work, model_dir, device)
        front = []
        for eta in args.etas:
            interpolate_(work, sft_params, target, eta)
            point = evaluate_policy(work, tokenizer, sft, reward, prompts, gold=gold, compute_dtype=compute, **settings)
            front.append({"eta": eta, **point})
        out.append({"model": str(model_dir), "front": front})
    return out


def _etas(value: str) -> list[float]:
    try:
        etas = sorted({float(x) for x in value.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--etas: give comma-separated numbers in [0, 1], got '{value}'") from None
    if not etas or not all(0.0 <= e <= 1.0 for e in etas):
        raise argparse.ArgumentTypeError(f"--etas: every η must lie in [0, 1], got '{value}'")
    return etas


def register(parser: argparse.ArgumentParser) -> None:
    task = parser.add_argument_group("task mode (the front of an iteration, from the WarpRun)")
    task.add_argument("--iteration", type=int, help="0-based iteration whose eval.json to write")
    task.add_argument("--spec", help="WarpRun file (default: $KWARP_SPEC)")
    tool = parser.add_argument_group("tool mode (one checkpoint, printed as JSON)")
    tool.add_argument("--model", action="append", help="policy folder to evaluate (repeat for several)")
    tool.add_argument("--etas", type=_etas, help="evaluate each model's LiTI path from --sft at these η (e.g. 0.2,0.5,1)")
    tool.add_argument("--sft", help="reference folder for the KL (θ_sft)")
    tool.add_argument("--reward", help="reward model folder or callable module:function")
    tool.add_argument("--gold", help="held-out judge scored beside the reward: model folder or module:function")
    tool.add_argument("--prompts", help="JSONL file of prompts")
    tool.add_argument("--prompt-field", default="prompt")
    tool.add_argument("--num-prompts", type=int, default=256)
    tool.add_argument("--samples", type=int, default=1)
    tool.add_argument("--max-new-tokens", type=int, default=64)
    tool.add_argument("--max-prompt-tokens", type=int, default=256)
    tool.add_argument("--temperature", type=float, default=0.9)
    tool.add_argument("--seed", type=int, default=0)
    tool.add_argument("--batch-size", type=int, default=32)
    tool.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    tool.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from kwarp.core.errors import UserError

    hf_logging.disable_progress_bar()
    if args.model is not None:
        missing = [flag for flag, v in (("--sft", args.sft), ("--reward", args.reward), ("--prompts", args.prompts)) if not v]
        if missing:
            raise UserError(f"tool mode needs {', '.join(missing)} with --model")
        for result in evaluate_folders(args):  # one JSON line per model
            print(json.dumps(result, sort_keys=True), flush=True)
        return 0
    if args.iteration is None:
        raise UserError("give --iteration I (task mode) or --model DIR --sft DIR --reward R --prompts FILE (tool mode)")
    from kwarp.core.spec import from_cli

    run = from_cli(args.spec)
    if not 0 <= args.iteration < run.spec.warp.iterations:
        raise UserError(f"--iteration {args.iteration} is outside 0..{run.spec.warp.iterations - 1}")
    evaluate_iteration(run, args.iteration, device=args.device)
    return 0
