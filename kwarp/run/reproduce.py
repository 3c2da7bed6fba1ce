"""`kwarp reproduce`: the paper's four findings, re-run on the bundled demo task.

    kwarp reproduce [--quick] [--seeds N] [--out DIR]

Runs, for each seed (runs of one seed share the SFT policy and the prompt order of member 0):

    warp-s<k>     WARP: EMA anchor, β = 0.1, μ = 0.01, M = 2, I = 3, next init at η = 0.3;
                  trajectories evaluated every few steps        -> findings 1 (EMA curve), 2, 3, 4
    warp4-s<k>    the same iteration 0 with M = 4: members 0-1 are copied from warp-s<k>
                  (identical by construction), members 2-3 trained   -> finding 2 (larger M)
    sft-b<β>-s<k> REINFORCE anchored at the SFT policy, β ∈ {0, 0.01, 0.1}  -> finding 1
    linear-*      linear averages of the members (`kwarp merge --method linear`), evaluated with
                  the same prompts, samples and seed as the fronts        -> finding 2

Every run goes through the same commands as `kwarp run` (the embedded executor for the WARP runs;
`kwarp prepare` / `kwarp train` / `kwarp merge` / `kwarp eval` processes for the rest), into one
file store under --out. Then the claims are computed from the stored evaluation files only, by
the pure functions below, whose criteria were fixed before any run (never tuned on results):

1. anchor   at the KL to θ_sft reached by the SFT-anchored β = 0.1 run at its last evaluation, the
            EMA-anchored members reach more reward: best reward of the EMA trajectory within that
            KL budget minus the best reward of the SFT β = 0.1 trajectory within it, > 0 on average.
2. merge    SLERP of the M members beats each member and beats linear averaging in reward:
            min(slerp − best member, slerp − linear) > 0 on average, for M = 2 and for M = 4.
3. liti     the LiTI front of iteration 1 lies above the members' training trajectories: the mean
            over trajectory points inside the front's KL range of (front reward at that KL − the
            point's reward) > 0 on average.
4. iterate  each iteration moves the front up: the hypervolume (rundata.hypervolume: area dominated
            by the front above the SFT reward, up to the largest KL of the seed's fronts) of the
            last iteration's front exceeds the first's, on average.

"On average" is the mean over seeds; claims.json also gives every seed's value and the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from kwarp.core.errors import UserError
from kwarp.core.spec import parse
from kwarp.run.rundata import Point, hypervolume, parse_metrics, reward_at_kl
from kwarp.store import FileStore, layout

SFT_BETAS = (0.0, 0.01, 0.1)
REFERENCE_BETA = 0.1  # the SFT-anchored run whose final KL sets the budget of finding 1


@dataclass(frozen=True)
class Scale:
    seeds: int
    steps: int  # T of every iteration and every baseline run
    iterations: int  # I of the WARP runs (finding 4)
    eval_every: int  # trajectory evaluation interval (findings 1 and 3)
    eval_prompts: int  # prompts of every evaluation (fronts, members, trajectories, linear)
    members_large: int = 4  # the larger M of finding 2


QUICK = Scale(seeds=2, steps=40, iterations=3, eval_every=10, eval_prompts=32)
FULL = Scale(seeds=3, steps=100, iterations=3, eval_every=10, eval_prompts=64)


# ------------------------------------------------------------------------------- run documents


def beta_label(beta: float) -> str:
    return f"b{round(beta * 1000)}"  # 0 -> b0, 0.01 -> b10, 0.1 -> b100 (DNS-safe run names)


def run_names(scale: Scale) -> dict[str, list[str]]:
    seeds = range(scale.seeds)
    return {
        "warp": [f"warp-s{k}" for k in seeds],
        "warp_large": [f"warp{scale.members_large}-s{k}" for k in seeds],
        "sft": [f"sft-{beta_label(b)}-s{k}" for k in seeds for b in SFT_BETAS],
    }


def documents(base: dict[str, Any], scale: Scale, seed_index: int, store: str) -> dict[str, dict[str, Any]]:
    """The WarpRun documents of one seed, derived from the demo task's document."""

    def variant(name: str, **warp: Any) -> dict[str, Any]:
        doc = json.loads(json.dumps(base))
        doc["metadata"] = {"name": name}
        spec = doc["spec"]
        spec["storage"] = {"url": store}
        spec["warp"].update({"steps": scale.steps, **warp})
        spec["training"]["seed"] = 100_000 * seed_index
        spec["evaluation"].update(prompts=scale.eval_prompts, every=scale.eval_every, trajectoryPrompts=scale.eval_prompts)
        return doc

    k = seed_index
    docs = {
        f"warp-s{k}": variant(f"warp-s{k}", iterations=scale.iterations, policies=2, anchor="ema", beta=0.1),
        f"warp{scale.members_large}-s{k}": variant(
            f"warp{scale.members_large}-s{k}", iterations=1, policies=scale.members_large, anchor="ema", beta=0.1
        ),
    }
    for beta in SFT_BETAS:
        name = f"sft-{beta_label(beta)}-s{k}"
        docs[name] = variant(name, iterations=1, policies=1, anchor="sft", beta=beta)
    return docs


# ------------------------------------------------------------------------------- the claims (pure)


def trajectory(rows: Sequence[dict[str, Any]]) -> list[Point]:
    """The (KL to θ_sft, reward) points a trainer measured along training (its `eval` entries)."""
    out = []
    for row in rows:
        ev = row.get("eval")
        if isinstance(ev, dict) and ev.get("reward") is not None:
            kl = ev.get("kl_sft", ev.get("kl"))
            if kl is not None:
                out.append(Point(reward=float(ev["reward"]), kl=float(kl)))
    return out


def best_within(points: Sequence[Point], kl_budget: float) -> float | None:
    """The best reward among points whose KL does not exceed the budget (None if none does)."""
    rewards = [p.reward for p in points if p.kl <= kl_budget]
    return max(rewards) if rewards else None


def anchor_gap(ema: Sequence[Sequence[Point]], sft_reference: Sequence[Point]) -> dict[str, Any]:
    """Finding 1 for one seed: EMA members' best reward within the SFT β=0.1 run's final KL, minus its own."""
    budget = sft_reference[-1].kl
    sft_best = best_within(sft_reference, budget)
    ema_best = [best_within(t, budget) for t in ema]
    ema_best_valid = [b for b in ema_best if b is not None]
    ema_mean = statistics.fmean(ema_best_valid) if ema_best_valid else None
    value = None if ema_mean is None or sft_best is None else ema_mean - sft_best
    return {"kl_budget": budget, "sft_best": sft_best, "ema_best": ema_best, "value": value}


def merge_gap(members: Sequence[Point], slerp: Point, linear: Point) -> dict[str, Any]:
    """Finding 2 for one seed and one M: SLERP minus the best member, and minus linear averaging."""
    best_member = max(p.reward for p in members)
    vs_member, vs_linear = slerp.reward - best_member, slerp.reward - linear.reward
    return {
        "slerp": asdict(slerp),
        "linear": asdict(linear),
        "members": [asdict(p) for p in members],
        "slerp_minus_best_member": vs_member,
        "slerp_minus_linear": vs_linear,
        "slerp_kl_minus_linear_kl": slerp.kl - linear.kl,
        "value": min(vs_member, vs_linear),
    }


def liti_gap(front: Sequence[Point], trajectories: Sequence[Sequence[Point]]) -> dict[str, Any]:
    """Finding 3 for one seed: mean of (front reward at the point's KL − point reward) over trajectory points."""
    gaps = []
    for t in trajectories:
        for p in t:
            r = reward_at_kl(front, p.kl)
            if r is not None:
                gaps.append(r - p.reward)
    return {"points": len(gaps), "value": statistics.fmean(gaps) if gaps else None}


def iteration_gain(fronts: Sequence[Sequence[Point]]) -> dict[str, Any]:
    """Finding 4 for one seed: hypervolume of each iteration's front; value = last − first."""
    floor = fronts[0][0].reward  # η = 0 of the first front is θ_sft
    ceiling = max(p.kl for f in fronts for p in f)
    hv = [hypervolume(f, floor, ceiling) for f in fronts]
    return {"sft_reward": floor, "kl_ceiling": ceiling, "hypervolume": hv, "value": hv[-1] - hv[0]}


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    xs = [v for v in values if v is not None]
    return {
        "per_seed": list(values),
        "mean": statistics.fmean(xs) if xs else None,
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0 if xs else None,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
    }


def _front(ev: dict[str, Any]) -> list[Point]:
    return [p for p in (Point.from_json(x) for x in sorted(ev["front"], key=lambda x: x["eta"])) if p is not None]


def _members(ev: dict[str, Any]) -> list[Point]:
    return [p for p in (Point.from_json(x) for x in ev["members"]) if p is not None]


def load_inputs(root: Path, scale: Scale) -> dict[str, Any]:
    """Everything the claims use, read from the stored evaluation files of a finished reproduction."""
    store = FileStore(root / "store")
    out: dict[str, Any] = {"seeds": []}
    for k in range(scale.seeds):
        warp, large = f"warp-s{k}", f"warp{scale.members_large}-s{k}"
        seed: dict[str, Any] = {
            "ema_trajectories": [
                trajectory(parse_metrics(store.get_bytes(layout.member_log(warp, 0, m)) or b"")) for m in range(2)
            ],
            "sft_trajectories": {
                b: trajectory(parse_metrics(store.get_bytes(layout.member_log(f"sft-{beta_label(b)}-s{k}", 0, 0)) or b""))
                for b in SFT_BETAS
            },
            "fronts": [_front(store.get_json(layout.eval_json(warp, i))) for i in range(scale.iterations)],
            "eval0": store.get_json(layout.eval_json(warp, 0)),
            "eval_large": store.get_json(layout.eval_json(large, 0)),
            "linear": {
                m: Point.from_json(json.loads((root / "linear" / f"s{k}-m{m}.json").read_text()))
                for m in (2, scale.members_large)
            },
        }
        out["seeds"].append(seed)
    return out


STATEMENTS = {
    "anchor": "EMA anchor beats the SFT anchor: at equal KL it reaches more reward",
    "merge": "SLERP of M runs beats each run and linear averaging in reward (M = 2 and a larger M)",
    "liti": "LiTI fronts lie above the REINFORCE training trajectories",
    "iterate": "each WARP iteration moves the front up (first to last iteration)",
}
CRITERIA = {
    "anchor": "mean over seeds of [best EMA-anchored reward with KL <= K] - [best SFT-anchored (beta=0.1) reward "
    "with KL <= K] > 0, K = final KL of the SFT-anchored beta=0.1 run",
    "merge": "for M=2 and M=4: mean over seeds of min(SLERP - best member, SLERP - linear average) > 0 (reward)",
    "liti": "mean over seeds of the mean over trajectory points (within the front's KL range) of "
    "[front reward at the point's KL - point reward] > 0",
    "iterate": "mean over seeds of hypervolume(front of last iteration) - hypervolume(front of first) > 0",
}


def claims(inputs: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """The four findings with their per-seed values, spread and verdict (pure)."""
    seeds = inputs["seeds"]
    anchor = [anchor_gap(s["ema_trajectories"], s["sft_trajectories"][REFERENCE_BETA]) for s in seeds]
    drift = [
        {f"beta={b:g}": (s["sft_trajectories"][b][-1].kl if s["sft_trajectories"][b] else None) for b in SFT_BETAS}
        | {"ema": statistics.fmean(t[-1].kl for t in s["ema_trajectories"] if t)}
        for s in seeds
    ]
    merges: dict[str, list[dict[str, Any]]] = {}
    for m, key in ((2, "eval0"), (scale.members_large, "eval_large")):
        merges[f"M={m}"] = [
            merge_gap(_members(s[key]), _front(s[key])[-1], s["linear"][m]) for s in seeds
        ]
    liti = [liti_gap(s["fronts"][0], s["ema_trajectories"]) for s in seeds]
    iterate = [iteration_gain(s["fronts"]) for s in seeds]

    def finding(key: str, per_seed: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        stats = summarize([p["value"] for p in per_seed])
        return {
            "id": key,
            "statement": STATEMENTS[key],
            "criterion": CRITERIA[key],
            "value": stats,
            "holds": stats["mean"] is not None and stats["mean"] > 0,
            "measured": per_seed,
            **(extra or {}),
        }

    merge_stats = {m: summarize([p["value"] for p in v]) for m, v in merges.items()}
    merge_holds = all(s["mean"] is not None and s["mean"] > 0 for s in merge_stats.values())
    larger = summarize(
        [b["slerp"]["reward"] - a["slerp"]["reward"] for a, b in zip(merges["M=2"], merges[f"M={scale.members_large}"], strict=True)]
    )
    return {
        "scale": asdict(scale),
        "findings": [
            finding("anchor", anchor, {"final_kl": drift}),
            {
                "id": "merge",
                "statement": STATEMENTS["merge"],
                "criterion": CRITERIA["merge"],
                "value": merge_stats,
                "holds": merge_holds,
                "measured": merges,
                "larger_m_slerp_reward_gain": larger,
            },
            finding("liti", liti),
            finding("iterate", iterate),
        ],
    }


# ------------------------------------------------------------------------------- running


class Reproduction:
    def __init__(self, out: Path, scale: Scale, console: Console, parallel: int = 2):
        self.out = out.resolve()
        self.scale = scale
        self.console = console
        self.parallel = parallel
        self.store_root = self.out / "store"
        self.store = FileStore(self.store_root)
        self.env = {**os.environ, "KWARP_NAMESPACE": "reproduce", "PYTHONUNBUFFERED": "1"}
        self.logs: dict[int, Path] = {}
        self.counter = 0

    def kwarp(self, *args: str, spec: dict[str, Any] | None = None, threads: int = 2) -> subprocess.Popen[bytes]:
        env = {**self.env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if spec is not None:
            env["KWARP_SPEC"] = json.dumps(spec)
        self.counter += 1
        log = self.out / "logs" / f"{self.counter:03d}-{args[0]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            p = subprocess.Popen([sys.executable, "-P", "-m", "kwarp", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        self.logs[p.pid] = log
        return p

    def wait_all(self, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        for what, p in procs:
            if p.wait() != 0:
                raise UserError(f"reproduce: {what} failed (exit {p.returncode}); see the logs in {self.out / 'logs'}")

    def warp(self, doc: dict[str, Any]) -> None:
        from kwarp.run.runner import LocalExecutor

        run = parse(doc)
        executor = LocalExecutor(run, self.store, parallel=self.parallel, console=self.console, live=False)
        if executor.execute() != 0:
            raise UserError(f"reproduce: run {run.name} failed; see {executor.log_dir}")

    def seed_large(self, source: str, target: str) -> None:
        """Members 0-1 of the M = 4 run are those of the M = 2 run: same seeds, same prompts, same steps."""
        if not self.store.has_checkpoint(layout.base(target)):
            self.store.put_checkpoint(self.store.open_checkpoint(layout.base(source)), layout.base(target))
        for m in range(2):
            for key_of in (layout.member_ema, layout.member_final):  # final last: it marks the member done
                if not self.store.has_checkpoint(key_of(target, 0, m)):
                    self.store.put_checkpoint(self.store.open_checkpoint(key_of(source, 0, m)), key_of(target, 0, m))
            log = self.store.get_bytes(layout.member_log(source, 0, m))
            if log is not None and not self.store.exists(layout.member_log(target, 0, m)):
                self.store.put_bytes(layout.member_log(target, 0, m), log)

    def sft_runs(self, docs: list[dict[str, Any]]) -> None:
        """prepare + train of the SFT-anchored runs, `parallel` at a time (they need no merge)."""
        todo = [d for d in docs if not self.store.has_checkpoint(layout.member_final(d["metadata"]["name"], 0, 0))]
        threads = max(1, (os.cpu_count() or 2) // self.parallel)
        for i in range(0, len(todo), self.parallel):
            batch = todo[i : i + self.parallel]
            self.wait_all([(f"prepare {d['metadata']['name']}", self.kwarp("prepare", spec=d)) for d in batch])
            self.wait_all(
                [
                    (f"train {d['metadata']['name']}", self.kwarp("train", "--iteration", "0", "--member", "0", spec=d, threads=threads))
                    for d in batch
                ]
            )

    def linear(self, run: str, members: int, k: int, spec: dict[str, Any]) -> None:
        target = self.out / "linear" / f"s{k}-m{members}.json"
        if target.exists():
            return
        model = self.out / "linear" / f"s{k}-m{members}"
        base = self.store.open_checkpoint(layout.base(run))
        member_args = [a for m in range(members) for a in ("--member", str(self.store.open_checkpoint(layout.member_final(run, 0, m))))]
        self.wait_all([("linear merge", self.kwarp("merge", "--init", str(base), *member_args, "--method", "linear",
                                                   "--out", str(model), "--overwrite"))])
        s = parse(spec).spec
        ev, tr = s.evaluation, s.training
        assert s.reward.location is not None
        p = self.kwarp(
            "eval", "--model", str(model), "--sft", str(base), "--reward", s.reward.location, "--prompts", s.data.eval,
            "--num-prompts", str(ev.prompts), "--samples", str(ev.samples_per_prompt),
            "--max-new-tokens", str(ev.max_new_tokens or tr.max_new_tokens),
            "--max-prompt-tokens", str(tr.max_prompt_tokens), "--temperature", str(ev.temperature or tr.temperature),
            "--seed", str(tr.seed), "--batch-size", str(ev.batch_size), "--device", "cpu",
        )
        self.wait_all([("linear eval", p)])
        point = _last_json_line(self.logs[p.pid])  # the tool prints its result as the last JSON line
        target.write_text(json.dumps(point, indent=1))
        shutil.rmtree(model, ignore_errors=True)

    def execute(self, base_doc: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        (self.out / "linear").mkdir(parents=True, exist_ok=True)
        for k in range(self.scale.seeds):
            docs = documents(base_doc, self.scale, k, str(self.store_root))
            warp, large = f"warp-s{k}", f"warp{self.scale.members_large}-s{k}"
            self.console.print(f"[bold]seed {k}[/]: WARP run {warp} (I={self.scale.iterations}, M=2, T={self.scale.steps})")
            self.warp(docs[warp])
            self.console.print(f"[bold]seed {k}[/]: M={self.scale.members_large} run {large}")
            self.seed_large(warp, large)
            self.warp(docs[large])
            self.console.print(f"[bold]seed {k}[/]: SFT-anchored runs β ∈ {list(SFT_BETAS)}")
            self.sft_runs([docs[n] for n in docs if n.startswith("sft-")])
            self.console.print(f"[bold]seed {k}[/]: linear averages")
            self.linear(warp, 2, k, docs[warp])
            self.linear(large, self.scale.members_large, k, docs[large])
        result = claims(load_inputs(self.out, self.scale), self.scale)
        result["seconds"] = time.time() - started
        result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (self.out / "claims.json").write_text(json.dumps(result, indent=1, default=_jsonable))
        figure(load_inputs(self.out, self.scale), result, self.out / "figure.png")
        (self.out / "README.md").write_text(readme(result))
        return result


def _jsonable(o: Any) -> Any:
    if isinstance(o, Point):
        return asdict(o)
    raise TypeError(type(o).__name__)


def _last_json_line(path: Path) -> dict[str, Any]:
    for line in reversed(path.read_text().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise UserError(f"reproduce: no JSON result in {path}")


# ------------------------------------------------------------------------------- outputs


def figure(inputs: dict[str, Any], result: dict[str, Any], path: Path) -> None:
    """Four panels in the spirit of the paper's Figures 1(b), 3 and 4, for seed 0 (others faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = inputs["seeds"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5), dpi=110)
    colors = {0.0: "#d62728", 0.01: "#ff7f0e", 0.1: "#8c564b"}
    verdict = {f["id"]: f for f in result["findings"]}

    def mark(ax: Any, key: str, title: str) -> None:
        f = verdict[key]
        v = f["value"] if key != "merge" else None
        status = "holds" if f["holds"] else "does not hold"
        extra = f" (mean {v['mean']:+.3f} ± {v['std']:.3f})" if v and v.get("mean") is not None else ""
        ax.set_title(f"{title}\nfinding {status}{extra}", fontsize=10)
        ax.set_xlabel("KL to the SFT policy (nats)")
        ax.set_ylabel("reward (reward model score)")
        ax.grid(alpha=0.3)

    # (a) anchors
    ax = axes[0, 0]
    for k, s in enumerate(seeds):
        alpha, lw = (1.0, 1.8) if k == 0 else (0.25, 1.0)
        for b, t in s["sft_trajectories"].items():
            ax.plot([p.kl for p in t], [p.reward for p in t], "-o", ms=2.5, color=colors[b], alpha=alpha, lw=lw,
                    label=f"SFT anchor β={b:g}" if k == 0 else None)
        for m, t in enumerate(s["ema_trajectories"]):
            ax.plot([p.kl for p in t], [p.reward for p in t], "-o", ms=2.5, color="#1f77b4", alpha=alpha, lw=lw,
                    label="EMA anchor β=0.1 (WARP)" if k == 0 and m == 0 else None)
    ax.legend(fontsize=8)
    mark(ax, "anchor", "1. EMA vs SFT anchor (training trajectories)")

    # (b) merging
    ax = axes[0, 1]
    for k, s in enumerate(seeds):
        alpha = 1.0 if k == 0 else 0.3
        for key, m, marker in (("eval0", 2, "*"), ("eval_large", 4, "P")):
            ev = s[key]
            mem, sl, lin = _members(ev), _front(ev)[-1], s["linear"][m]
            ax.scatter([p.kl for p in mem], [p.reward for p in mem], s=18, color="grey", alpha=alpha,
                       label="members" if k == 0 and m == 2 else None)
            ax.scatter([sl.kl], [sl.reward], s=140, marker=marker, color="#2ca02c", alpha=alpha,
                       label=f"SLERP M={m}" if k == 0 else None)
            ax.scatter([lin.kl], [lin.reward], s=70, marker="s" if m == 2 else "D", color="#9467bd", alpha=alpha,
                       label=f"linear M={m}" if k == 0 else None)
    ax.legend(fontsize=8)
    mark(ax, "merge", "2. SLERP vs linear averaging vs members")

    # (c) LiTI
    ax = axes[1, 0]
    s = seeds[0]
    for m, t in enumerate(s["ema_trajectories"]):
        ax.plot([p.kl for p in t], [p.reward for p in t], "-o", ms=2.5, color="#1f77b4", alpha=0.7,
                label="members' trajectories (REINFORCE, EMA anchor)" if m == 0 else None)
    front = s["fronts"][0]
    ax.plot([p.kl for p in front], [p.reward for p in front], "-D", color="#2ca02c", lw=2,
            label="LiTI front θ_η = (1-η)θ_sft + ηθ_slerp")
    for p in front:
        eta = p.eta if p.eta is not None else float("nan")
        ax.annotate(f"η={eta:g}", (p.kl, p.reward), textcoords="offset points", xytext=(-8, 6), fontsize=7)
    ax.legend(fontsize=8)
    mark(ax, "liti", "3. LiTI front vs training trajectories (seed 0)")

    # (d) iterations
    ax = axes[1, 1]
    cmap = plt.get_cmap("viridis")
    gains = verdict["iterate"]["measured"][0]["hypervolume"]
    n = len(s["fronts"])
    for i, f in enumerate(s["fronts"]):
        ax.plot([p.kl for p in f], [p.reward for p in f], "-o", color=cmap(i / max(1, n - 1) * 0.85), lw=2,
                label=f"iteration {i + 1} (hypervolume {gains[i]:.3f})")
    ax.scatter([s["fronts"][0][0].kl], [s["fronts"][0][0].reward], color="black", zorder=5, label="SFT policy")
    ax.legend(fontsize=8)
    mark(ax, "iterate", "4. Fronts of successive WARP iterations (seed 0)")

    fig.suptitle("kwarp reproduce: the WARP paper's four findings on the demo task (up and to the left is better)",
                 fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def readme(result: dict[str, Any]) -> str:
    scale = result["scale"]
    lines = [
        "# kwarp reproduce",
        "",
        f"Demo task, {scale['seeds']} seeds, T = {scale['steps']} steps per run, I = {scale['iterations']}, "
        f"evaluation on {scale['eval_prompts']} prompts. Made {result.get('created', '')} in "
        f"{result.get('seconds', 0) / 60:.1f} min. `figure.png` shows the four panels; `claims.json` the numbers.",
        "",
        "| finding | criterion (fixed before the run) | mean ± sd over seeds | holds |",
        "| --- | --- | --- | --- |",
    ]
    for f in result["findings"]:
        if f["id"] == "merge":
            value = "; ".join(f"{m}: {v['mean']:+.4f} ± {v['std']:.4f}" for m, v in f["value"].items())
        else:
            v = f["value"]
            value = "n/a" if v["mean"] is None else f"{v['mean']:+.4f} ± {v['std']:.4f}"
        lines.append(f"| {f['statement']} | {f['criterion']} | {value} | {'yes' if f['holds'] else 'no'} |")
    lines += ["", "Per-seed values and the measured quantities behind each are in `claims.json`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- CLI


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"smaller runs ({QUICK.seeds} seeds, T={QUICK.steps})")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: 2 quick, 3 full)")
    parser.add_argument("--steps", type=int, help="override T of every run")
    parser.add_argument("--out", default="reproduce", help="output folder (runs, claims.json, figure.png)")
    parser.add_argument("--parallel", type=int, default=2, help="processes at once")
    parser.add_argument("--claims-only", action="store_true", help="recompute claims and figure from a finished --out")
    parser.set_defaults(func=_main)


def scale_from(args: argparse.Namespace) -> Scale:
    scale = QUICK if args.quick else FULL
    if args.seeds is not None:
        scale = Scale(**{**asdict(scale), "seeds": args.seeds})
    if args.steps is not None:
        scale = Scale(**{**asdict(scale), "steps": args.steps})
    if scale.seeds < 1 or scale.steps < 1:
        raise UserError("--seeds and --steps must be at least 1")
    return scale


def _main(args: argparse.Namespace) -> int:
    console = Console()
    scale = scale_from(args)
    out = Path(args.out)
    repro = Reproduction(out, scale, console, parallel=args.parallel)
    if args.claims_only:
        result = claims(load_inputs(repro.out, scale), scale)
        (repro.out / "claims.json").write_text(json.dumps(result, indent=1, default=_jsonable))
        figure(load_inputs(repro.out, scale), result, repro.out / "figure.png")
        (repro.out / "README.md").write_text(readme(result))
    else:
        from kwarp.tasks import build, demo_document

        build()
        result = repro.execute(demo_document())
    for f in result["findings"]:
        console.print(f"{'[green]holds[/]' if f['holds'] else '[red]does not hold[/]'}  {f['statement']}")
    console.print(f"claims: {repro.out / 'claims.json'}  figure: {repro.out / 'figure.png'}")
    return 0


__all__ = ["FULL", "QUICK", "Scale", "claims", "load_inputs", "register"]
