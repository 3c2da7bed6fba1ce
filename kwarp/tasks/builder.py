"""Building the demo task into a cache folder, once.

    kwarp task build            # the CPU demo: about 13 CPU-minutes measured (README), then cached
    kwarp task path             # the folder: policy/, reward/, data/, warprun.yaml, build.json

The folder is `$KWARP_CACHE/tasks/sentiment-v1-<fingerprint>` (default cache `~/.cache/kwarp`).
The fingerprint hashes the seed, the build configuration, the shipped data files and the source
of the modules that make the task, so a change to any of them builds a new folder instead of
reusing a stale one. The whole folder is built in a staging sibling and renamed into place once
its MANIFEST.json is written: a half-built task is never visible, and `policy/` and `reward/` are
checkpoints with manifests of their own.

Layout of a built task:

    policy/             SFT policy: GPT-2 causal LM, safetensors, tokenizer, MANIFEST.json
    reward/             reward model: GPT2ForSequenceClassification (1 output), same tokenizer
    data/train.jsonl    training prompts {"prompt": ...}
    data/eval.jsonl     evaluation prompts, disjoint from the training prompts
    data/sft.jsonl      the SFT texts {"text": ...}
    data/preferences.jsonl, data/preferences-eval.jsonl   the reward model's pairs
    warprun.yaml        the demo WarpRun (relative locations; checkpoints go to runs/)
    build.json          figures: parameters, times, losses, reward-model accuracy and calibration
    MANIFEST.json       every file above, with the fingerprint in its meta
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kwarp.core.errors import UserError
from kwarp.tasks.corpus import CorpusSizes
from kwarp.tasks.document import HEADER, RUNS_FOLDER, warprun

TASK = "sentiment"
VERSION = "v1"
MANIFEST = "MANIFEST.json"
# Modules whose code decides what the task folder holds (cli and __init__ do not).
_CONTENT_MODULES = ("builder", "corpus", "document", "grammar", "sentiment", "tokenizer", "training")


@dataclass(frozen=True)
class ModelSizes:
    """The policy's shape (the reward model shares it: it starts from the policy's transformer)."""

    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64


@dataclass(frozen=True)
class BuildConfig:
    """Everything that sizes the build; tests pass a small one to build in seconds."""

    sizes: CorpusSizes = field(default_factory=CorpusSizes)
    model: ModelSizes = field(default_factory=ModelSizes)
    vocab_size: int = 1024
    sft_steps: int = 300
    sft_batch_size: int = 64
    sft_lr: float = 3e-3
    rm_steps: int = 500
    rm_batch_size: int = 32
    rm_lr: float = 1e-3
    max_new_tokens: int = 24
    eval_samples: int = 200  # SFT samples scored by the reward model and the gold rule for build.json
    threads: int = 2
    extra_clauses: int = 0  # the grammar's longest review: 2 + extra_clauses clauses (grammar.ReviewGrammar)
    device: str = "cpu"  # where the two models train ("cuda" for the medium task)

    def to_dict(self) -> dict[str, Any]:
        # The device decides where the models train, not what they are: the fingerprint leaves it out.
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "device"}


# The task sizes `kwarp task build --size` knows. small: the demo, built on a CPU in about 13 CPU-minutes (README).
# medium: the GPU reproduction's task: a 27M-parameter policy (8 layers of 512), a 4096-token vocabulary,
# reviews of up to four clauses, ten times the texts; trained from scratch on a GPU in a few minutes.
# tiny: a smoke-test size (one layer of 48, built in seconds), for tests and for trying a pipeline end to end.
SIZES: dict[str, BuildConfig] = {
    "tiny": BuildConfig(
        sizes=CorpusSizes(sft_texts=1200, rm_train_pairs=1500, rm_eval_pairs=100, train_prompts=60, eval_prompts=24),
        model=ModelSizes(n_layer=1, n_embd=48, n_head=2, n_positions=64),
        vocab_size=600,
        sft_steps=60,
        sft_batch_size=32,
        sft_lr=5e-3,
        rm_steps=120,
        rm_batch_size=32,
        rm_lr=3e-3,
        max_new_tokens=12,
        eval_samples=16,
    ),
    "small": BuildConfig(),
    "medium": BuildConfig(
        sizes=CorpusSizes(sft_texts=200_000, rm_train_pairs=100_000, rm_eval_pairs=5_000, train_prompts=8_000,
                          eval_prompts=2_000),
        model=ModelSizes(n_layer=8, n_embd=512, n_head=8, n_positions=128),
        vocab_size=4096,
        sft_steps=3000,
        sft_batch_size=128,
        sft_lr=6e-4,
        rm_steps=2000,
        rm_batch_size=64,
        rm_lr=2e-4,
        max_new_tokens=40,
        eval_samples=1000,
        threads=8,
        extra_clauses=2,
        device="cuda",
    ),
}


def config_for(size: str) -> BuildConfig:
    try:
        return SIZES[size]
    except KeyError:
        raise UserError(f"unknown task size '{size}'; use one of {', '.join(SIZES)}") from None


def cache_root() -> Path:
    env = os.environ.get("KWARP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kwarp"


def fingerprint(seed: int = 0, config: BuildConfig | None = None) -> str:
    config = config or SIZES["small"]
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"task": TASK, "version": VERSION, "seed": seed, "config": config.to_dict()}, sort_keys=True
        ).encode()
    )
    package = resources.files("kwarp.tasks")
    for name in sorted(p.name for p in package.joinpath("data").iterdir() if p.is_file()):
        h.update(name.encode() + b"\0" + package.joinpath("data", name).read_bytes())
    for module in _CONTENT_MODULES:
        h.update(module.encode() + b"\0" + package.joinpath(f"{module}.py").read_bytes())
    return h.hexdigest()


def task_dir(seed: int = 0, config: BuildConfig | None = None, size: str = "small") -> Path:
    """Where `build(seed, config=config)` puts the task (it may not be built yet)."""
    config = config or config_for(size)
    label = "" if config == SIZES["small"] else f"-{size}" if size != "small" else "-custom"
    return cache_root() / "tasks" / f"{TASK}{label}-{VERSION}-{fingerprint(seed, config)[:12]}"


def _manifest_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("meta", {})
    except (OSError, ValueError):
        return None


def is_built(folder: Path | None = None, seed: int = 0, config: BuildConfig | None = None, size: str = "small") -> bool:
    """True when `folder` (default: task_dir) holds a complete task made by this code and configuration."""
    from kwarp.core.checkpoints import is_complete

    config = config or config_for(size)
    folder = Path(folder) if folder is not None else task_dir(seed, config, size)
    meta = _manifest_meta(folder)
    if meta is None or meta.get("fingerprint") != fingerprint(seed, config):
        return False
    return all(is_complete(p) for p in (folder, folder / "policy", folder / "reward"))


def demo_document(store_url: str | None = None, folder: Path | None = None) -> dict[str, Any]:
    """The built task's WarpRun with absolute locations; checkpoints go to `store_url` (default <task>/runs)."""
    folder = Path(folder) if folder is not None else task_dir()
    if _manifest_meta(folder) is None:
        raise UserError(f"the demo task is not built in {folder}; run `kwarp task build` first")
    folder = folder.resolve()
    return warprun(
        policy=str(folder / "policy"),
        reward=str(folder / "reward"),
        train=str(folder / "data" / "train.jsonl"),
        eval=str(folder / "data" / "eval.jsonl"),
        storage=store_url or str(folder / RUNS_FOLDER),
        max_new_tokens=_max_new_tokens(folder),
    )


def _max_new_tokens(folder: Path) -> int:
    return int(json.loads((folder / "build.json").read_text())["config"]["max_new_tokens"])


# ---------------------------------------------------------------- building


def build(
    seed: int = 0,
    force: bool = False,
    out: str | Path | None = None,
    progress: bool = True,
    config: BuildConfig | None = None,
    size: str = "small",
) -> Path:
    """Build the task (or find it built) and return its folder.

    `size` picks a preset (SIZES) unless `config` is given. `out` builds into that folder instead of
    the cache. An existing folder is replaced only if it is an older build of this task; its runs/
    folder is carried over to the new build.
    """
    config = config or config_for(size)
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"the {size} task trains its models on a GPU and none is available here")
    folder = Path(out).expanduser().resolve() if out is not None else task_dir(seed, config, size)
    if not force and is_built(folder, seed, config):
        return folder
    occupied = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    if occupied and (_manifest_meta(folder) or {}).get("task") != TASK:
        raise UserError(
            f"{folder} exists and is not a kwarp demo task folder; choose an empty or new --out folder"
        )

    from kwarp.core.checkpoints import staging

    with _keep_runs(folder), staging(folder) as tmp:
        _build_into(tmp, seed, config, progress)
    return folder


@contextlib.contextmanager
def _keep_runs(folder: Path) -> Iterator[None]:
    """Move <folder>/runs aside while the folder is rebuilt, and back afterwards (also on failure)."""
    runs = folder / RUNS_FOLDER
    if not runs.is_dir():
        yield
        return
    aside = folder.parent / f".{folder.name}.runs-{uuid.uuid4().hex[:8]}"
    os.replace(runs, aside)
    try:
        yield
    finally:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(aside, runs)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _pair_row(p: Any) -> dict[str, Any]:
    return {
        "prompt": p.prompt,
        "chosen": p.chosen,
        "rejected": p.rejected,
        "gold_chosen": round(p.gold_chosen, 4),
        "gold_rejected": round(p.gold_rejected, 4),
    }


def _build_into(tmp: Path, seed: int, config: BuildConfig, show: bool) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    from kwarp.core.checkpoints import write_manifest
    from kwarp.core.weights import save_pretrained
    from kwarp.tasks import training
    from kwarp.tasks.corpus import make_corpus
    from kwarp.tasks.progress import BuildProgress
    from kwarp.tasks.sentiment import join, judge
    from kwarp.tasks.tokenizer import train_tokenizer

    seconds: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    with _torch_threads(config.threads), _quiet_transformers(), BuildProgress(show) as bar:
        t = time.perf_counter()
        with bar.stage("corpus"):
            corpus = make_corpus(seed, config.sizes, extra_clauses=config.extra_clauses)
            _write_jsonl(tmp / "data" / "train.jsonl", [{"prompt": p} for p in corpus.train_prompts])
            _write_jsonl(tmp / "data" / "eval.jsonl", [{"prompt": p} for p in corpus.eval_prompts])
            _write_jsonl(tmp / "data" / "sft.jsonl", [{"text": s} for s in corpus.sft_texts])
            _write_jsonl(tmp / "data" / "preferences.jsonl", [_pair_row(p) for p in corpus.rm_train])
            _write_jsonl(tmp / "data" / "preferences-eval.jsonl", [_pair_row(p) for p in corpus.rm_eval])
        seconds["corpus"] = time.perf_counter() - t

        t = time.perf_counter()
        with bar.stage("tokenizer"):
            texts = (
                corpus.sft_texts
                + [p.chosen_text for p in corpus.rm_train]
                + [p.rejected_text for p in corpus.rm_train]
            )
            tokenizer = train_tokenizer(texts, config.vocab_size, config.model.n_positions)
        seconds["tokenizer"] = time.perf_counter() - t

        t = time.perf_counter()
        torch.manual_seed(seed)
        policy = GPT2LMHeadModel(training.policy_config(tokenizer, **dataclasses.asdict(config.model)))
        policy.generation_config = training.generation_config(tokenizer, config.max_new_tokens)
        policy.to(config.device)
        with bar.stage("sft", total=config.sft_steps) as on_step:
            sft_losses = training.train_sft(
                policy,
                tokenizer,
                corpus.sft_texts,
                steps=config.sft_steps,
                batch_size=config.sft_batch_size,
                lr=config.sft_lr,
                seed=seed,
                on_step=on_step,
            )
        seconds["sft"] = time.perf_counter() - t

        t = time.perf_counter()
        rm = training.reward_model_from(policy, seed).to(config.device)
        with bar.stage("reward", total=config.rm_steps) as on_step:
            rm_losses = training.train_reward_model(
                rm,
                tokenizer,
                corpus.rm_train,
                steps=config.rm_steps,
                batch_size=config.rm_batch_size,
                lr=config.rm_lr,
                seed=seed + 1,
                on_step=on_step,
            )
        seconds["reward"] = time.perf_counter() - t

        t = time.perf_counter()
        with bar.stage("evaluate"):
            scale = training.rescale_reward(
                rm, training.reward_scores(rm, tokenizer, corpus.sft_texts[:2000])
            )
            chosen = training.reward_scores(rm, tokenizer, [p.chosen_text for p in corpus.rm_eval])
            rejected = training.reward_scores(rm, tokenizer, [p.rejected_text for p in corpus.rm_eval])
            decided = [
                (c > r, p.gold_chosen > p.gold_rejected)
                for c, r, p in zip(chosen.tolist(), rejected.tolist(), corpus.rm_eval, strict=True)
                if p.gold_chosen != p.gold_rejected
            ]
            prompts = (corpus.eval_prompts * (1 + config.eval_samples // max(1, len(corpus.eval_prompts))))[
                : config.eval_samples
            ]
            completions = training.sample(
                policy, tokenizer, prompts, max_new_tokens=config.max_new_tokens, temperature=0.9, seed=seed
            )
            full = [join(p, c) for p, c in zip(prompts, completions, strict=True)]
            rewards = training.reward_scores(rm, tokenizer, full)
            judged = [judge(text, c) for text, c in zip(full, completions, strict=True)]
            gold = torch.tensor([j.score for j in judged])
            correlation = (
                float(torch.corrcoef(torch.stack([rewards, gold]))[0, 1]) if len(full) > 1 else float("nan")
            )
        seconds["evaluate"] = time.perf_counter() - t

        t = time.perf_counter()
        with bar.stage("save"):
            policy, rm = policy.cpu(), rm.cpu()
            meta = {"task": TASK, "seed": seed}
            save_pretrained(policy, tmp / "policy", tokenizer=tokenizer, meta={**meta, "role": "policy"})
            tokenizer.padding_side = (
                "right"  # a classifier reads the last real token; right padding keeps positions
            )
            save_pretrained(rm, tmp / "reward", tokenizer=tokenizer, meta={**meta, "role": "reward"})
            document = warprun(
                policy="policy",
                reward="reward",
                train="data/train.jsonl",
                eval="data/eval.jsonl",
                storage=RUNS_FOLDER,
                max_new_tokens=config.max_new_tokens,
            )
            (tmp / "warprun.yaml").write_text(HEADER + yaml.safe_dump(document, sort_keys=False))
        seconds["save"] = time.perf_counter() - t

    seconds["total"] = time.perf_counter() - started
    figures = {
        "task": TASK,
        "version": VERSION,
        "seed": seed,
        "fingerprint": fingerprint(seed, config),
        "config": config.to_dict(),
        "threads": config.threads,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_seconds": round(time.process_time() - cpu_started, 2),
        "vocab_size": len(tokenizer),
        "parameters": {"policy": training.count_parameters(policy), "reward": training.count_parameters(rm)},
        "sft": {"steps": config.sft_steps, "first_loss": sft_losses[0], "final_loss": _tail_mean(sft_losses)},
        "reward_model": {
            "steps": config.rm_steps,
            "final_loss": _tail_mean(rm_losses),
            "heldout_pairs": len(decided),
            "heldout_accuracy": sum(a == b for a, b in decided) / max(1, len(decided)),
            "scale": scale,
        },
        "sft_samples": {
            "n": len(full),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if len(full) > 1 else 0.0,
            "gold_mean": float(gold.mean()),
            "reward_gold_correlation": correlation,
            "penalised_fraction": sum(j.penalty > 0 for j in judged) / max(1, len(judged)),
        },
    }
    (tmp / "build.json").write_text(json.dumps(figures, indent=1))
    write_manifest(
        tmp, {"task": TASK, "version": VERSION, "seed": seed, "fingerprint": figures["fingerprint"]}
    )


def _tail_mean(values: list[float], n: int = 20) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def read_figures(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "build.json").read_text())
