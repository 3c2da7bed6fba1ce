"""Pilots of the reproduction's regime (docs/reproduction.md, "Pilots"): one WARP iteration per setting.

    python -P scripts/repro_pilots.py --out /tmp/pilots NAME [NAME ...]     (names: see PILOTS)

Each pilot is the demo task's WarpRun with one iteration, a few settings changed, run by the
embedded executor into <out>/store. It prints, and appends to <out>/pilots.jsonl, what the regime
depends on:

- angle   the mean over layers of the angle between the members' task vectors (merge.json; for M > 2
          the mean pairwise angle), with its range over layers and over member pairs;
- lag     μT and the EMA's measured lag: KL(π‖π_ema) / KL(π‖π_init) at the last logged steps;
- reward  where the members end: reward-model score and gold score of the members and of θ_sft
          (eval.json), and the training reward's rise over the last 20% of steps (still rising or flat);
- power   per-prompt standard deviation of paired differences between points of the front (eval.json
          per_prompt), which sizes the evaluation of the full run.

Pilots read nothing but what the run stores; they are documented, with their figures, whether they
helped or not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from kwarp.core.spec import parse
from kwarp.run.rundata import parse_metrics
from kwarp.store import FileStore, layout

# name -> (warp overrides, training overrides, evaluation overrides)
PILOTS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # batch size (prompts per step; 4 samples each) at the demo's learning rate and μ
    "b8": ({"emaRate": 0.01}, {"batchSize": 8}, {}),
    "b16": ({"emaRate": 0.01}, {"batchSize": 16}, {}),
    "b32": ({"emaRate": 0.01}, {"batchSize": 32}, {}),
    "b4": ({"emaRate": 0.01}, {"batchSize": 4}, {}),
    # EMA lag: μT = 5 and 10 at T = 100
    "b16-mu05": ({"emaRate": 0.05}, {"batchSize": 16}, {}),
    "b16-mu10": ({"emaRate": 0.1}, {"batchSize": 16}, {}),
    "b8-mu10": ({"emaRate": 0.1}, {"batchSize": 8}, {}),
    "b4-mu10": ({"emaRate": 0.1}, {"batchSize": 4}, {}),
    # learning rate (where iteration 1 ends in the reward model's range)
    "b8-mu10-lr5e5": ({"emaRate": 0.1}, {"batchSize": 8, "learningRate": 5e-5}, {}),
    "b8-mu10-lr2e4": ({"emaRate": 0.1}, {"batchSize": 8, "learningRate": 2e-4}, {}),
    # prompt orders: M = 4 members (six pairs, six different pairs of prompt orders)
    "b8-mu10-m4": ({"emaRate": 0.1, "policies": 4}, {"batchSize": 8}, {}),
    "b16-mu10-m4": ({"emaRate": 0.1, "policies": 4}, {"batchSize": 16}, {}),
    # the reward model's reach: no KL penalty, a high learning rate, twice the steps
    "ceiling": ({"beta": 0.0, "anchor": "sft", "policies": 1, "steps": 200}, {"batchSize": 16, "learningRate": 3e-4}, {}),
    # power: 1000 prompts x 4 samples on the front of one setting
    "power": ({"emaRate": 0.1}, {"batchSize": 8}, {"prompts": 1000, "samplesPerPrompt": 4, "etas": [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]}),
}


def document(base: dict[str, Any], name: str, store: str) -> dict[str, Any]:
    warp, training, evaluation = PILOTS[name]
    doc = json.loads(json.dumps(base))
    doc["metadata"] = {"name": f"pilot-{name}"}
    spec = doc["spec"]
    spec["storage"] = {"url": store}
    spec["warp"].update({"iterations": 1, "steps": 100, **warp})
    spec["training"].update(training)
    spec["evaluation"].update({"prompts": 200, "samplesPerPrompt": 2, "etas": [0.0, 1.0], "every": 0, **evaluation})
    spec["evaluation"]["goldReward"] = {"callable": "kwarp.tasks.sentiment:true_score"}
    return doc


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summarize(store: FileStore, doc: dict[str, Any]) -> dict[str, Any]:
    run = doc["metadata"]["name"]
    spec = parse(doc).spec
    m_count, steps = spec.warp.policies, spec.warp.steps_for(0)
    out: dict[str, Any] = {"run": run, "M": m_count, "T": steps, "mu": spec.warp.ema_rate,
                           "muT": spec.warp.ema_rate * steps, "batch": spec.training.batch_size,
                           "lr": spec.training.learning_rate, "beta": spec.warp.beta, "anchor": spec.warp.anchor}
    merge = store.get_json(layout.merge_report(run, 0)) or {}
    groups = [g for g in merge.get("groups", []) if g.get("angle_deg") is not None]
    if groups:
        angles = [g["angle_deg"] for g in groups]
        pairs = []
        for i in range(m_count):
            for j in range(i + 1, m_count):
                per_layer = [g["pairwise_angles_deg"][i][j] for g in groups if g["pairwise_angles_deg"][i][j] is not None]
                weights = [g["params"] for g in groups if g["pairwise_angles_deg"][i][j] is not None]
                pairs.append(sum(a * w for a, w in zip(per_layer, weights, strict=True)) / sum(weights))
        out["angle"] = {"mean_over_layers": _mean(angles), "min_layer": min(angles), "max_layer": max(angles),
                        "param_weighted_per_pair": pairs,
                        "norm_ratio_mean": _mean([g["norm_ratio"] for g in groups if g.get("norm_ratio") is not None])}
    members = []
    for m in range(m_count):
        rows = parse_metrics(store.get_bytes(layout.member_log(run, 0, m)) or b"")
        tail = rows[-max(1, len(rows) // 10):]
        rise_from = rows[int(len(rows) * 0.8) - 1] if rows else None
        ratio = [r["kl_anchor"] / r["kl_init"] for r in tail if r.get("kl_anchor") is not None and r.get("kl_init")]
        members.append({
            "train_reward_last10": _mean([r["reward"] for r in tail]),
            "train_reward_at_80pct": rise_from["reward"] if rise_from else None,
            "kl_anchor_last10": _mean([r["kl_anchor"] for r in tail if r.get("kl_anchor") is not None]),
            "kl_init_last10": _mean([r["kl_init"] for r in tail if r.get("kl_init") is not None]),
            "anchor_over_init": _mean(ratio),
            "seconds": (rows[-1]["time"] - rows[0]["time"] + rows[0]["step_seconds"]) if rows else None,
        })
    out["members_train"] = members
    ev = store.get_json(layout.eval_json(run, 0)) or {}
    strip = ("per_prompt",)
    out["front"] = [{k: v for k, v in p.items() if k not in strip} for p in ev.get("front", [])]
    out["members_eval"] = [{k: v for k, v in p.items() if k not in strip} for p in ev.get("members", [])]
    points = {f"eta={p['eta']:g}": p for p in ev.get("front", [])} | {f"member{p['member']}": p for p in ev.get("members", [])}
    power = {}
    names = sorted(points)
    for a in names:
        for b in names:
            if a < b and "per_prompt" in points[a] and "per_prompt" in points[b]:
                pa, pb = points[a]["per_prompt"], points[b]["per_prompt"]
                for key in ("reward", "gold"):
                    if key in pa and key in pb:
                        d = [x - y for x, y in zip(pa[key], pb[key], strict=True)]
                        power[f"{key}: {a} - {b}"] = {"mean": statistics.fmean(d), "sd": statistics.stdev(d), "n": len(d)}
    out["paired_sd"] = power
    out["eval_seconds"] = ev.get("seconds")
    out["samples"] = ev.get("samples")
    return out


def main() -> int:
    from kwarp.run.runner import LocalExecutor
    from kwarp.tasks import build, demo_document

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(PILOTS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--task", type=Path, help="a built task folder (default: build the demo task)")
    args = parser.parse_args()
    console = Console()
    base = demo_document(folder=args.task if args.task is not None else build())
    out = args.out.resolve()
    store = FileStore(out / "store")
    for name in args.names:
        doc = document(base, name, str(out / "store"))
        started = time.time()
        load = Path("/proc/loadavg").read_text().split()[:3]
        executor = LocalExecutor(parse(doc), store, parallel=args.parallel, console=console, live=False)
        if executor.execute() != 0:
            console.print(f"[red]pilot {name} failed[/]; see {executor.log_dir}")
            return 1
        result = {"pilot": name, "seconds": time.time() - started, "load_start": load,
                  "load_end": Path("/proc/loadavg").read_text().split()[:3], **summarize(store, doc)}
        with open(out / "pilots.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        console.print_json(json.dumps({k: v for k, v in result.items() if k != "paired_sd"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
