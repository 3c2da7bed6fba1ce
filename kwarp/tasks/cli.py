"""`kwarp task`: build the bundled demo task, print where it is, show what its models do.

kwarp task build [--force] [--out DIR] [--seed N]
kwarp task path [--seed N]
kwarp task show [--seed N] [--samples K] [--temperature T]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kwarp.core.errors import UserError


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{build,path,show}", required=True)

    build = sub.add_parser("build", help="build the task (the CPU demo: about 13 CPU-minutes, measured; cached afterwards)")
    build.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    build.add_argument("--out", type=Path, default=None, help="build into this folder instead of the cache")
    build.add_argument("--seed", type=int, default=0, help="seed of the texts and of the training runs")
    build.add_argument("--size", choices=("tiny", "small", "medium"), default="small",
                       help="small: the CPU demo (0.7M-parameter policy); medium: the GPU reproduction's task "
                       "(27M parameters, trained on a GPU); tiny: a smoke test built in seconds")
    build.set_defaults(func=_build)

    path = sub.add_parser("path", help="print the task folder (exit status 1 when it is not built yet)")
    path.add_argument("--seed", type=int, default=0)
    path.add_argument("--size", choices=("tiny", "small", "medium"), default="small")
    path.set_defaults(func=_path)

    show = sub.add_parser("show", help="sample the SFT policy and print reward-model and gold scores")
    show.add_argument("--seed", type=int, default=0, help="the task's seed (which build to show)")
    show.add_argument("--out", type=Path, default=None, help="a task folder built with --out")
    show.add_argument("--samples", type=int, default=8, help="number of evaluation prompts to complete")
    show.add_argument("--temperature", type=float, default=0.9)
    show.set_defaults(func=_show)


def _build(args: argparse.Namespace) -> int:
    from kwarp.tasks.builder import build, read_figures

    folder = build(seed=args.seed, force=args.force, out=args.out, progress=True, size=args.size)
    figures = read_figures(folder)
    rm, samples = figures["reward_model"], figures["sft_samples"]
    print(
        f"demo task in {folder}\n"
        f"  policy {figures['parameters']['policy']:,} parameters, reward model {figures['parameters']['reward']:,}; "
        f"built in {figures['seconds']['total']:.0f} s\n"
        f"  reward model: held-out pair accuracy {rm['heldout_accuracy']:.3f}; on SFT samples mean reward "
        f"{samples['reward_mean']:+.2f}, correlation with the gold score {samples['reward_gold_correlation']:.2f}\n"
        f"  run it: kwarp run {folder / 'warprun.yaml'}"
    )
    return 0


def _path(args: argparse.Namespace) -> int:
    from kwarp.tasks.builder import is_built, task_dir

    folder = task_dir(args.seed, size=args.size)
    print(folder)
    if not is_built(folder, args.seed, size=args.size):
        print("not built yet: run `kwarp task build`", file=sys.stderr)
        return 1
    return 0


def _show(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from kwarp.core.checkpoints import verify
    from kwarp.tasks.builder import read_figures, task_dir
    from kwarp.tasks.sentiment import join, judge
    from kwarp.tasks.training import reward_scores, sample

    folder = args.out.resolve() if args.out is not None else task_dir(args.seed)
    if not (folder / "MANIFEST.json").is_file():
        raise UserError(f"the demo task is not built in {folder}; run `kwarp task build` first")
    verify(folder / "policy", hashes=False)
    verify(folder / "reward", hashes=False)
    tokenizer = AutoTokenizer.from_pretrained(folder / "policy")
    policy = AutoModelForCausalLM.from_pretrained(folder / "policy", use_safetensors=True).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(folder / "reward", use_safetensors=True).eval()
    prompts = [
        json.loads(line)["prompt"] for line in (folder / "data" / "eval.jsonl").read_text().splitlines()
    ]
    prompts = prompts[: args.samples]
    max_new = read_figures(folder)["config"]["max_new_tokens"]
    with torch.no_grad():
        completions = sample(
            policy, tokenizer, prompts, max_new_tokens=max_new, temperature=args.temperature, seed=args.seed
        )
        texts = [join(p, c) for p, c in zip(prompts, completions, strict=True)]
        rewards = reward_scores(rm, tokenizer, texts).tolist()
    table = Table(title=f"SFT samples of {folder.name}", show_lines=False)
    table.add_column("prompt", style="dim")
    table.add_column("completion")
    table.add_column("RM", justify="right")
    table.add_column("gold", justify="right")
    for p, c, text, r in zip(prompts, completions, texts, rewards, strict=True):
        table.add_row(p, c, f"{r:+.2f}", f"{judge(text, c).score:+.2f}")
    Console().print(table)
    return 0
