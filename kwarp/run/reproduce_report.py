"""What `kwarp reproduce` leaves to read: figure.png (six panels) and README.md (the verdict table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kwarp.run import claims as C
from kwarp.run.rundata import Point
from kwarp.run.stats import PromptPoint

_VERDICT_COLOR = {"holds": "#2ca02c", "fails": "#d62728", "unresolved": "#b8860b"}
_BETA_COLORS = {0.0: "#d62728", 0.01: "#ff7f0e", 0.1: "#8c564b", 0.3: "#e377c2", 1.0: "#7f7f7f"}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def interval(c: Mapping[str, Any], digits: int = 3) -> str:
    return f"{_fmt(c.get('value'), digits)} [{_fmt(c.get('lower_95'), digits)}, {_fmt(c.get('upper_95'), digits)}]"


def _means(points: Mapping[str, PromptPoint], names: Sequence[str]) -> list[Point]:
    return [points[n].mean() for n in names if n in points]


def figure(inputs: dict[str, Any], result: dict[str, Any], path: Path) -> None:
    """Anchors, merging, LiTI, iterations (reward model and gold), and the verdicts; seed 0 drawn
    solid, the other seeds faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fronts, trajs, lay = inputs["front_seeds"], inputs["traj_seeds"], inputs["layout"]
    findings = {f["id"]: f for f in result["findings"]}
    fig, axes = plt.subplots(2, 3, figsize=(18, 10.5), dpi=100)
    steps = lay["steps"]

    def title(ax: Any, fid: str, text: str, reward: str = "reward model score") -> None:
        f = findings[fid]
        c = f["criteria"][0]
        ax.set_title(f"{text}\n{f['verdict']}: {c['id']} = {interval(c)}", fontsize=10,
                     color=_VERDICT_COLOR.get(f["verdict"], "black"))
        ax.set_xlabel("KL to the SFT policy (nats)")
        ax.set_ylabel(reward)
        ax.grid(alpha=0.3)

    # (a) anchors: trajectories
    ax = axes[0, 0]
    for k, t in enumerate(trajs):
        alpha, lw = (1.0, 1.8) if k == 0 else (0.25, 1.0)
        for beta in C.SFT_BETAS:
            key = f"sft-{C.beta_label(beta)}"
            pts = _means(t, C.trajectory_names(key, steps[key]))
            ax.plot([p.kl for p in pts], [p.reward for p in pts], "-o", ms=2.5, lw=lw, alpha=alpha,
                    color=_BETA_COLORS[beta], label=f"SFT anchor β={beta:g}" if k == 0 else None)
        for m in range(2):
            pts = _means(t, C.trajectory_names(f"ema{m}", steps[f"ema{m}"]))
            ax.plot([p.kl for p in pts], [p.reward for p in pts], "-o", ms=2.5, lw=lw, alpha=alpha, color="#1f77b4",
                    label="EMA anchor β=0.1 (WARP members)" if k == 0 and m == 0 else None)
    ax.legend(fontsize=7)
    title(ax, "anchor", "1. EMA vs SFT anchor: training trajectories")

    # (b) merging (seed 0): members' LiTI paths, the SLERP front, linear averages; other seeds' endpoints faint
    ax = axes[0, 1]
    for k, f in enumerate(fronts):
        alpha = 1.0 if k == 0 else 0.3
        for m in range(C.MEMBERS_LARGE):
            prefix = "m2" if m < 2 else f"m{C.MEMBERS_LARGE}"
            pts = _means(f, C.member_front(prefix, m, lay["member_etas"]))
            if k == 0:
                ax.plot([p.kl for p in pts], [p.reward for p in pts], "-", color="grey", lw=1, alpha=0.7,
                        label="members' own LiTI paths" if m == 0 else None)
            ax.scatter([pts[-1].kl], [pts[-1].reward], color="grey", s=20, alpha=alpha,
                       label="members" if k == 0 and m == 0 else None)
        for names, color, label in ((C.front_names(0, lay["etas"]), "#2ca02c", "SLERP M=2, LiTI front"),
                                    (C.large_front(lay["large_etas"]), "#17becf", f"SLERP M={C.MEMBERS_LARGE}, LiTI front")):
            pts = _means(f, names)
            if k == 0:
                ax.plot([p.kl for p in pts], [p.reward for p in pts], "-", color=color, lw=1.8, label=label)
            ax.scatter([pts[-1].kl], [pts[-1].reward], marker="*", s=160, color=color, alpha=alpha, zorder=5)
        for key, marker in (("m2", "s"), (f"m{C.MEMBERS_LARGE}", "D")):
            p = f[f"{key}/linear"].mean()
            ax.scatter([p.kl], [p.reward], marker=marker, s=60, color="#9467bd", alpha=alpha, zorder=5,
                       label=f"linear average {key.upper()}" if k == 0 else None)
    ax.legend(fontsize=7)
    title(ax, "merge", "2. SLERP vs members and linear averaging (iteration 0)")

    # (c) LiTI vs trajectories (seed 0)
    ax = axes[0, 2]
    t = trajs[0]
    for m in range(2):
        pts = _means(t, C.trajectory_names(f"ema{m}", steps[f"ema{m}"]))
        ax.plot([p.kl for p in pts], [p.reward for p in pts], "-o", ms=3, color="#1f77b4", alpha=0.7,
                label="members' trajectories (REINFORCE, EMA anchor)" if m == 0 else None)
    pts = _means(t, C.front_names(0, lay["etas"]))
    ax.plot([p.kl for p in pts], [p.reward for p in pts], "-D", ms=4, color="#2ca02c", lw=2,
            label="LiTI front of iteration 0 (θ_sft to SLERP)")
    ax.legend(fontsize=7)
    title(ax, "liti", "3. LiTI front vs training trajectories (seed 0)")

    # (d, e) iterations: reward model and gold
    cmap = plt.get_cmap("viridis")
    n = lay["iterations"]
    for ax, gold in ((axes[1, 0], False), (axes[1, 1], True)):
        for k, f in enumerate(fronts):
            for i in range(n):
                pts = _means(f, C.front_names(i, lay["etas"]))
                ys = [p.gold if gold else p.reward for p in pts]
                if any(y is None for y in ys):
                    continue
                ax.plot([p.kl for p in pts], ys, "-o" if k == 0 else "-", ms=3, lw=2 if k == 0 else 1,
                        alpha=1.0 if k == 0 else 0.25, color=cmap(i / max(1, n - 1) * 0.85),
                        label=f"iteration {i} front" if k == 0 else None)
        ax.legend(fontsize=7)
        if gold:
            g = findings["iterate"]["criteria"][0].get("gold", {})
            ax.set_title(f"4'. The same fronts scored by the hidden gold rule\n4a on gold = {interval(g)}", fontsize=10)
            ax.set_xlabel("KL to the SFT policy (nats)")
            ax.set_ylabel("gold reward (never trained on)")
            ax.grid(alpha=0.3)
        else:
            title(ax, "iterate", "4. Fronts of successive WARP iterations")

    # (f) the verdict table
    ax = axes[1, 2]
    ax.axis("off")
    lines = []
    for f in result["findings"]:
        lines.append((f"{f['id']}: {f['verdict']}", _VERDICT_COLOR.get(f["verdict"], "black"), True))
        for c in f["criteria"]:
            gold = f"  gold {_fmt(c['gold']['value'])}" if "gold" in c else ""
            lines.append((f"  {c['id']:<16} {interval(c)}  {c['verdict']}{gold}", "black", False))
    y = 1.0
    for text, color, bold in lines:
        ax.text(0.0, y, text, family="monospace", fontsize=7.2, color=color, weight="bold" if bold else "normal",
                transform=ax.transAxes, va="top")
        y -= 0.95 / max(len(lines), 1)
    ax.set_title("criteria: value [one-sided 95% bounds] verdict", fontsize=10)

    scale = result["scale"]
    fig.suptitle(f"kwarp reproduce ({scale['name']}): {scale['seeds']} seeds, T = {scale['steps']}, "
                 f"{scale['eval_prompts']} prompts x {scale['eval_samples']} samples per point "
                 "(up and to the left is better)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def readme(result: dict[str, Any]) -> str:
    scale = result["scale"]
    minutes = result.get("seconds", 0) / 60
    lines = [
        f"# kwarp reproduce ({scale['name']})",
        "",
        f"{scale['seeds']} seeds, T = {scale['steps']} steps per run, I = {scale['iterations']}; every point evaluated "
        f"on {scale['eval_prompts']} prompts x {scale['eval_samples']} samples (trajectories: the first "
        f"{scale['trajectory_prompts']} prompts). Made {result.get('created', '')} in {minutes:.1f} min "
        f"(load average {result.get('load_start')} at the start, {result.get('load_end')} at the end). "
        f"Criteria: kwarp/run/claims.py (commit {result.get('criteria_commit', 'see docs/reproduction.md')}).",
        "",
        "Value, then the one-sided 95% lower and upper bounds (bootstrap over prompts and seeds); δ = "
        f"{result['delta']} reward ({result['delta_kl']} nats for KL statistics). holds: lower > 0; fails: upper < δ; "
        "otherwise unresolved. `gold`: the same statistic on the hidden gold reward.",
        "",
        "| finding | verdict | criterion | value [lower, upper] | verdict | gold value [lower, upper] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in result["findings"]:
        for j, c in enumerate(f["criteria"]):
            head = (f"{f['id']}", f"**{f['verdict']}**") if j == 0 else ("", "")
            gold = interval(c["gold"]) if "gold" in c else ""
            lines.append(f"| {head[0]} | {head[1]} | {c['id']}: {c['statistic']} | {interval(c)} | {c['verdict']} | {gold} |")
    lines += ["", "Per-seed values and per-seed intervals are in `claims.json`; the figure is `figure.png`.", ""]
    return "\n".join(lines)
