"""Time one WARP training step, split into its phases, on any Hugging Face causal LM.

    python benchmarks/train_step.py --model DIR [--reward module:fn | DIR] [--prompts FILE]
    python benchmarks/train_step.py --random-model-params 100e6 --device cuda     # no model needed

It runs the trainer's own `training_step` (EMA anchor, KL to init unless --no-kl-to-init,
leave-one-out) on B prompts × k samples and prints, per step, the seconds spent in generation,
scoring (reward), reference log-probs (anchor and θ_init), the policy's forward/backward/Adam step
and the EMA update, each also as a share of the step; generated tokens per second; the peak GPU
memory on CUDA. The last line is the mean milliseconds per step.

Variants (--variants, taking turns step by step in one process, ratios against the first):
`baseline` is the trainer before issue 16 (transformers' generate, the entropy recomputed in the
update, Adam's per-tensor loop, every row's prompt run through each model pass, GPT-2's GELU as
Python arithmetic), `kwarp` the trainer as it is (--generation), `trl` TRL's
RLOOTrainer on the same step shape when trl is installed (benchmarks/trl_step.py), run after the
other variants, which are then timed again: their ratio to TRL is printed against both timings. On a CPU the
phases are timed by process CPU time (--clock), which other processes' load does not inflate.
The update's FLOPs and TFLOP/s are printed, and its MFU on a GPU. docs/performance.md has figures.

Default: the demo task's SFT policy, reward model and training prompts when the task is built
(`kwarp task build`); otherwise give --model or --random-model-params.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kwarp.core.spec import RewardSpec, parse
from kwarp.policy import load_reward, read_prompts
from kwarp.trainer.models import Models, load_models, make_accelerator, make_optimizer
from kwarp.trainer.step import StepConfig, training_step

# (n_layer, n_embd, n_head) of the random GPT-2 models, smallest first.
GPT2_LADDER = [(2, 64, 2), (4, 128, 4), (6, 256, 4), (8, 512, 8), (12, 768, 12), (24, 1024, 16), (24, 1536, 16),
               (32, 2560, 20)]
PHASES = ("generate", "score", "reference", "train", "ema")


def vowel_fraction(prompts: list[str], completions: list[str]) -> list[float]:
    """A cheap stand-in reward (so the timing shows the policy's cost, not a reward model's)."""
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


def gpt2_params(n_layer: int, n_embd: int, vocab: int, positions: int) -> int:
    return (vocab + positions) * n_embd + n_layer * (12 * n_embd * n_embd + 13 * n_embd) + 2 * n_embd


def random_model(folder: Path, params: float, arch: str, vocab: int, positions: int) -> Path:
    """A randomly initialised GPT-2 or Llama of about `params` parameters, with a character tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    n_layer, n_embd, n_head = min(GPT2_LADDER, key=lambda c: abs(gpt2_params(c[0], c[1], vocab, positions) - params))
    special = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3}
    chars = {chr(c): len(special) + i for i, c in enumerate(range(32, 127))}
    core = Tokenizer(models.WordLevel({**special, **chars}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    ids = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1}
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                                           n_positions=positions, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=n_layer, hidden_size=n_embd,
                                             intermediate_size=int(8 * n_embd / 3) // 64 * 64 or 64,
                                             num_attention_heads=n_head, num_key_value_heads=max(1, n_head // 4),
                                             vocab_size=vocab, max_position_embeddings=positions, **ids))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def demo_task() -> Path | None:
    """The built demo task's folder (policy/, reward/, data/), if `kwarp task build` has run."""
    from kwarp import tasks

    return tasks.task_dir() if tasks.is_built() else None


def synthetic_prompts(n: int) -> list[str]:
    topics = ["the new phone", "this film", "the hotel", "a coffee maker", "the last album", "our trip"]
    return [f"Review {i}: {topics[i % len(topics)]} was" for i in range(n)]


@dataclass
class Variant:
    """One way of running the step: its own copy of the models, optimizer and settings."""

    name: str
    cfg: StepConfig
    models: Models
    optimizer: torch.optim.Optimizer
    records: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)  # timed again after TRL (--variants ...,trl)


def variants(names: list[str], spec: Any, model_dir: Path, accelerator: Any, batch: int) -> list[Variant]:
    """baseline: what the trainer did before issue 16 (transformers' generate, the entropy taken again in
    the update, Adam's per-tensor loop, a prompt run k times per pass, GPT-2's GELU unfused); kwarp: the trainer as it is (spec.training.generation, fused Adam)."""
    out = []
    for name in names:
        cfg = StepConfig.from_spec(spec, batch)
        models = load_models(model_dir, spec, accelerator.device, kl_to_init=spec.training.kl_to_init)
        if name == "baseline":
            cfg = replace(cfg, generation="plain", shared_prompts=False)
            for model in {id(m): m for m in (models.bare, models.anchor, models.init) if m is not None}.values():
                python_gelu_(model)
            optimizer: torch.optim.Optimizer = torch.optim.Adam(models.params, lr=1e-6, foreach=False)
        else:
            optimizer = make_optimizer(models.params, 1e-6)
        models.policy, optimizer = accelerator.prepare(models.bare, optimizer)
        out.append(Variant(name, cfg, models, optimizer))
    return out


def python_gelu_(model: Any) -> None:
    """Undo kwarp.policy.fused for the baseline: GPT-2's gelu_new as transformers writes it (Python arithmetic)."""
    from transformers.activations import NewGELUActivation

    from kwarp.policy.fused import TanhGELU

    if getattr(model.config, "activation_function", None) != "gelu_new":
        return
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, TanhGELU):
                setattr(parent, child_name, NewGELUActivation())


def update_flops(model: Any, rows: int, prompt: int, completion: int, group: int) -> float:
    """Model FLOPs of one policy update as the variant runs it (forward + backward = 6 FLOPs per
    parameter per token).

    Without prompt sharing (group 1) the body's matrices see every row's prompt + completion and the
    output head the C + 1 positions kept (logits_to_keep). With each prompt run once per group of k
    rows, the body sees rows/k prompts and rows × (C − 1) completion tokens, the head rows/k + rows ×
    (C − 1) positions. Embedding lookups cost nothing. Attention's own L² term is left out (under 5%
    at these lengths), so the MFU printed is a slight underestimate.
    """
    head = model.get_output_embeddings().weight
    embeddings = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    params = {id(p): p.numel() for p in model.parameters()}
    body = sum(params.values()) - sum(embeddings.values()) - (0 if id(head) in embeddings else head.numel())
    if group == 1:
        return 6.0 * (body * rows * (prompt + completion) + head.numel() * rows * (completion + 1))
    prompts = rows // group
    return 6.0 * (body * (prompts * prompt + rows * (completion - 1)) + head.numel() * (prompts + rows * (completion - 1)))


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """Dense bf16 peak of the GPU (for MFU): --peak-tflops, else known parts by name."""
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    known = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
    return next((v for k, v in known.items() if k in name), None)


def compare_trl(args: Any, model_dir: Path, prompts: list[str], spec: Any, runs: list[Variant], clock: Any,
                device: torch.device) -> float | None:
    """TRL's RLOOTrainer on the same model and step shape (benchmarks/trl_step.py): its mean ms per step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run with -P: this folder is not on sys.path
    import trl_step

    if not trl_step.available():
        print("trl: not installed (pip install trl beside kwarp to compare); skipped")
        return None
    if args.reward != "__main__:vowel_fraction":
        print("trl: compared with the built-in callable reward only; skipped")
        return None
    tr = spec.training
    seconds, walls = trl_step.time_trl(
        model_dir, prompts, vowel_fraction, batch=args.batch, samples=args.samples, max_new_tokens=args.max_new_tokens,
        temperature=tr.temperature, beta=spec.warp.beta, ema_rate=spec.warp.ema_rate, steps=args.steps, clock=clock,
        device=device.type,
    )
    trl_ms = 1e3 * statistics.mean(seconds)
    print(f"trl RLOOTrainer ms_per_step {trl_ms:.1f} ({', '.join(f'{s:.3f}s' for s in seconds)}), wall "
          f"{1e3 * statistics.mean(walls):.1f} ms")
    return trl_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="HF causal-LM folder (safetensors)")
    p.add_argument("--random-model-params", type=float, help="build a random model of about N parameters instead")
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2", help="architecture of the random model")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary of the random model")
    p.add_argument(
        "--reward", help="callable module:function or reward model folder (default: the demo task's reward "
        "model with the demo policy, else a vowel-counting callable)"
    )
    p.add_argument("--prompts", type=Path, help="JSONL prompts (field 'prompt'); default: synthetic")
    p.add_argument("--batch", type=int, default=32, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="completions per prompt")
    p.add_argument("--micro-batch", type=int, help="prompts per forward/backward (default: the whole batch)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one untimed warm-up step)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--anchor", default="ema", choices=["ema", "sft", "none"])
    p.add_argument("--no-kl-to-init", action="store_true",
                   help="spec.training.klToInit false: no θ_init pass (TRL's step has none either)")
    p.add_argument("--generation", default="auto", choices=["auto", "plain", "compiled"],
                   help="spec.training.generation of the kwarp variant")
    p.add_argument("--variants", default="baseline,kwarp",
                   help="comma-separated, run step by step in turn: baseline (the trainer before issue 16) and/or "
                   "kwarp (as it is); ratios are against the first")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--peak-tflops", type=float, help="dense peak of the device for the update's MFU (default: "
                   "known GPUs by name)")
    p.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                   help="what times the phases: wall time, or this process's CPU time (which other processes' load "
                   "does not inflate; auto: cpu on a CPU device, wall on CUDA)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="kwarp-bench-")
    reward_default = "__main__:vowel_fraction"
    if args.random_model_params:
        model_dir = random_model(Path(tmp.name) / "model", args.random_model_params, args.arch, args.vocab, 512)
    elif args.model is not None:
        model_dir = args.model
    else:
        task = demo_task()
        if task is None:
            p.error("give --model DIR or --random-model-params N (or build the demo task: kwarp task build)")
        model_dir, reward_default = task / "policy", str(task / "reward")
        args.prompts = args.prompts or task / "data" / "train.jsonl"
    args.reward = args.reward or reward_default
    is_callable = ":" in args.reward and not Path(args.reward).exists()
    reward_spec = {"callable": args.reward} if is_callable else {"location": args.reward}
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1",
        "kind": "WarpRun",
        "metadata": {"name": "bench"},
        "spec": {
            "policy": {"location": str(model_dir), "dtype": args.dtype},
            "reward": reward_spec,
            "data": {"train": str(args.prompts or model_dir), "eval": str(args.prompts or model_dir)},
            "warp": {"anchor": args.anchor},
            "training": {
                "batchSize": args.batch, "samplesPerPrompt": args.samples, "maxNewTokens": args.max_new_tokens,
                "microBatchSize": args.micro_batch, "learningRate": 1e-6, "warmupSteps": 0,
                "generation": args.generation, "klToInit": not args.no_kl_to_init,
            },
            "storage": {"url": tmp.name},
        },
    }
    spec = parse(doc).spec
    accelerator = make_accelerator(args.dtype, args.device)
    device = accelerator.device
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names or set(names) - {"baseline", "kwarp", "trl"} or names == ["trl"]:
        p.error("--variants: a comma-separated list of baseline, kwarp (and trl)")
    with_trl = "trl" in names
    runs = variants([n for n in names if n != "trl"], spec, model_dir, accelerator, args.batch)
    reward = load_reward(RewardSpec(**reward_spec), device)
    prompts = read_prompts(args.prompts, "prompt") if args.prompts else synthetic_prompts(args.batch)
    n_params = sum(p.numel() for p in runs[0].models.params)
    print(
        f"model {model_dir.name if not args.random_model_params else args.arch} {n_params / 1e6:.2f}M params, "
        f"vocab {runs[0].models.bare.config.vocab_size}, {args.batch} prompts x {args.samples} samples, "
        f"{args.max_new_tokens} new tokens, device {device}, compute {accelerator.mixed_precision}, anchor "
        f"{args.anchor}, KL to init {'off' if args.no_kl_to_init else 'on'}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu")
    clock = time.process_time if use_cpu_clock else time.perf_counter
    print(f"phases and steps timed by {'process CPU time' if use_cpu_clock else 'wall time'}")
    peaks: dict[str, int] = {}

    def play(steps: range, into: str) -> None:
        """Time `steps` of every variant, their records into run.<into>; step 0 is an untimed warm-up."""
        for step in steps:
            # Variants take turns within a step (the order alternating), so load on a shared machine hits both alike.
            for run in runs if step % 2 == 0 else runs[::-1]:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                torch.manual_seed(step)
                batch = [prompts[(step * args.batch + i) % len(prompts)] for i in range(args.batch)]
                record = training_step(run.models, reward, run.optimizer, accelerator, batch, step, run.cfg, clock=clock)
                record["wall_seconds"] = record["step_seconds"]
                record["step_seconds"] = sum(record["timing"].values())
                prompt_width = len(run.models.tokenizer(batch, padding=True)["input_ids"][0])
                record["update_flops"] = update_flops(
                    run.models.bare, args.batch * args.samples, prompt_width, args.max_new_tokens,
                    args.samples if run.cfg.shared_prompts else 1,
                )
                if device.type == "cuda":
                    peaks[run.name] = max(peaks.get(run.name, 0), torch.cuda.max_memory_allocated(device))
                if step == 0:
                    continue  # warm-up: kernels, caches, allocator, compilation
                getattr(run, into).append(record)
                split = " ".join(f"{ph} {record['timing'][ph]:.3f}s" for ph in PHASES)
                print(f"step {step} {run.name}: {record['step_seconds']:.3f}s ({split}; wall {record['wall_seconds']:.3f}s), "
                      f"{record['tokens_per_second']:.0f} tok/s, {record['completion_tokens']:.1f} tokens/completion")

    play(range(args.steps + 1), "records")

    base = None
    for run in runs:
        mean_step = statistics.mean(r["step_seconds"] for r in run.records)
        summary = {ph: statistics.mean(r["timing"][ph] for r in run.records) for ph in PHASES}
        base = base or (run.name, mean_step, summary)
        print(f"{run.name} mean per step: " + ", ".join(
            f"{ph} {s * 1e3:.1f} ms ({100 * s / mean_step:.0f}%)" for ph, s in summary.items()))
        gen_tps = statistics.mean(r["completion_tokens"] * args.batch * args.samples / r["timing"]["generate"]
                                  for r in run.records)
        print(f"{run.name} generated tokens/s (generation phase): {gen_tps:.0f}")
        if run.name in peaks:
            print(f"{run.name} peak GPU memory: {peaks[run.name] / 2**30:.2f} GiB")
        flops = statistics.mean(r["update_flops"] for r in run.records)
        achieved = flops / summary["train"] / 1e12
        peak = peak_tflops(device, args.peak_tflops)
        mfu = f", MFU {100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s" if peak else ""
        print(f"{run.name} update: {flops / 1e9:.1f} GFLOP per step, {achieved:.3f} TFLOP/s{mfu}")
        wall = statistics.mean(r["wall_seconds"] for r in run.records)
        print(f"{run.name} ms_per_step {mean_step * 1e3:.1f}, wall {wall * 1e3:.1f} ms")
        if run is not runs[0]:
            ratios = ", ".join(f"{ph} {summary[ph] / max(base[2][ph], 1e-9):.2f}x" for ph in PHASES)
            print(f"{run.name} / {base[0]}: step {mean_step / base[1]:.2f}x ({ratios})")
    trl_ms = compare_trl(args, model_dir, prompts, spec, runs, clock, device) if with_trl else None
    if trl_ms is not None:
        # TRL runs after the kwarp variants, not in turns with them: time them again after it, so a load
        # that changed while TRL ran shows as a difference between the two ratios.
        play(range(args.steps + 1, 2 * args.steps + 1), "after")
        for run in runs:
            before = 1e3 * statistics.mean(r["step_seconds"] for r in run.records)
            after = 1e3 * statistics.mean(r["step_seconds"] for r in run.after)
            print(f"{run.name} / trl: {(before + after) / 2 / trl_ms:.2f}x ({before:.1f} ms before TRL: "
                  f"{before / trl_ms:.2f}x; {after:.1f} ms after: {after / trl_ms:.2f}x)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
