"""The report's figures: the KL–reward plane, the training curves and the angles between task vectors.

Each function takes a `RunData` and returns PNG bytes. A bare matplotlib Figure (no pyplot): no
global state, no GUI backend.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from kwarp.run.rundata import Point, RunData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = ("pareto.png", "curves.png", "angles.png")
DPI = 120


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at both ends so the curve keeps its length."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size <= 2:
        return values.copy()
    window = min(window, values.size)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts


def smoothing_window(n: int) -> int:
    """A tenth of the steps, at most 200: enough to read the trend of a noisy REINFORCE curve, short
    enough to keep its shape (warm-up, plateaus)."""
    return min(200, max(1, n // 10))


def iteration_colors(n: int) -> list[tuple[float, float, float, float]]:
    """A sequential (viridis) colour per iteration, dark to light; the palest yellow is left out."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if n <= 1:
        return [cmap(0.3)]
    return [cmap(0.05 + 0.8 * i / (n - 1)) for i in range(n)]


def _figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot): no global state, no GUI backend; savefig renders with Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.set_layout_engine("tight")
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def has_gold(data: RunData) -> bool:
    """Whether the run measured a gold reward (spec.evaluation.goldReward) at its evaluated points."""
    return any(p.gold is not None for it in data.iterations for p in it.front)


def pareto_figure(data: RunData, score: str = "reward") -> bytes:
    """The KL–reward plane of the run (the picture of the paper's Figure 1(b)).

    score "gold" draws the same policies scored by the run's gold reward (a held-out judge that
    was never trained on): where the reward model's front keeps rising and the gold's turns down,
    the policy is exploiting the reward model.
    """
    from matplotlib.lines import Line2D

    def y(p: Point) -> float | None:
        return p.gold if score == "gold" else p.reward

    def yerr(p: Point) -> float:
        return (p.gold_stderr if score == "gold" else p.reward_stderr) or 0.0

    fig = _figure(9.5, 6.6)
    ax = fig.add_subplot()
    colors = iteration_colors(len(data.iterations))
    eta = data.liti_eta
    shown: set[str] = set()  # which kinds of marks are drawn: the legend lists only those
    last_front = data.with_front[-1].iteration if data.with_front else None

    for it, color in zip(data.iterations, colors, strict=True):
        for member in it.members:
            traj = member.eval_trajectory()
            traj = [(s, p) for s, p in traj if y(p) is not None]
            if traj:
                ks, rs = [p.kl for _, p in traj], [y(p) for _, p in traj]
                ax.plot(ks, rs, ls=":", lw=1.2, marker=".", ms=3, color=color, alpha=0.7, zorder=2)
                shown.add("eval trajectory")
            elif it.iteration == 0 and score == "reward":
                # No held-out evaluation logged: at iteration 0 θ_init = θ_sft, so the training
                # batches' KL to init is a KL to SFT (noisier, on training prompts).
                steps, kls = member.series("kl_init")
                _, rewards = member.series("reward")
                if kls.size and kls.size == rewards.size:
                    w = smoothing_window(kls.size)
                    ax.plot(smooth(kls, w), smooth(rewards, w), ls="--", lw=1.0, color=color, alpha=0.6, zorder=2)
                    shown.add("batch trajectory")
        front = [p for p in it.front if y(p) is not None]
        if front:
            shown.add("front")
            ks = [p.kl for p in front]
            rs = [y(p) for p in front]
            ax.errorbar(
                ks, rs,
                xerr=[p.kl_stderr or 0.0 for p in front],
                yerr=[yerr(p) for p in front],
                fmt="-o", color=color, lw=2.2, ms=5, capsize=2.5, elinewidth=1, zorder=4,
            )
            if it.iteration == last_front:
                for p in front:
                    if p.eta is not None and p.eta > 0:
                        # Above-left of the point: the better side, left empty by the points below the front.
                        ax.annotate(
                            f"η={p.eta:g}", (p.kl, y(p)), textcoords="offset points", xytext=(-5, 5),
                            ha="right", va="bottom", fontsize=8, color="0.25", zorder=7,
                        )
        for member in it.members:
            if member.final is not None and y(member.final) is not None:
                ax.scatter(member.final.kl, y(member.final), marker="^", s=70, color=color,
                           edgecolors="black", linewidths=0.8, zorder=5)
                shown.add("member")
        if it.slerp is not None and y(it.slerp) is not None:
            ax.scatter(it.slerp.kl, y(it.slerp), marker="*", s=260, color=color,
                       edgecolors="black", linewidths=0.8, zorder=6)
            shown.add("slerp")
        if it.next_init is not None and y(it.next_init) is not None:
            ax.scatter(it.next_init.kl, y(it.next_init), marker="D", s=60, facecolors="white",
                       edgecolors=[color], linewidths=2.0, zorder=6)
            shown.add("next init")

    exported = data.exported
    if exported is not None and y(exported) is not None:
        ax.errorbar([exported.kl], [y(exported)], xerr=[exported.kl_stderr or 0.0], yerr=[yerr(exported)], fmt="o",
                    ms=13, markerfacecolor="none", markeredgecolor="black", markeredgewidth=2.0, ecolor="black",
                    elinewidth=1, capsize=2.5, zorder=8)  # fmt: skip
        shown.add("exported")

    sft = data.sft
    if sft is not None and y(sft) is not None:
        ax.scatter(sft.kl, y(sft), marker="s", s=80, color="black", zorder=7)
        ax.annotate("SFT (η=0)", (sft.kl, y(sft)), textcoords="offset points", xytext=(8, -4),
                    fontsize=9, zorder=7)
        shown.add("sft")

    what = "gold reward (held-out judge)" if score == "gold" else "reward"
    ax.set_title(f"WARP run '{data.run}': {what} vs KL to the SFT policy, per iteration", fontsize=12)
    if not shown:
        _empty(ax, "nothing evaluated yet: fronts appear once an iteration's evaluation has run")
        return _png(fig)

    ax.set_xlabel("KL to the SFT policy (nats)")
    ax.set_ylabel("gold reward (never trained on)" if score == "gold" else "reward (reward model score)")
    ax.grid(True, alpha=0.3)
    ax.text(0.015, 0.975, "better ↖", transform=ax.transAxes, ha="left", va="top", fontsize=10, color="0.35")

    handles = []
    for it, c in zip(data.iterations, colors, strict=True):
        if it.front:
            handles.append(Line2D([], [], color=c, lw=2.2, marker="o", ms=5,
                                  label=f"iteration {it.iteration}: LiTI front (η from 0 to 1)"))
        elif any(m.steps for m in it.members):
            handles.append(Line2D([], [], color=c, lw=4, alpha=0.7,
                                  label=f"iteration {it.iteration}: {it.status}, front not evaluated yet"))
    grey = {"color": "0.6", "markeredgecolor": "black", "ls": "none"}
    legend = {
        "eval trajectory": Line2D([], [], color="0.4", ls=":", marker=".",
                                  label="a member's training (held-out evaluations)"),
        "batch trajectory": Line2D([], [], color="0.4", ls="--",
                                   label="a member's training, iteration 0 (training batches, smoothed)"),
        "member": Line2D([], [], marker="^", ms=8, label="a member's final policy (after RL)", **grey),
        "slerp": Line2D([], [], marker="*", ms=14, label="SLERP of the members (η=1)", **grey),
        "next init": Line2D([], [], marker="D", ms=7, ls="none", markerfacecolor="white", markeredgecolor="0.4",
                            markeredgewidth=2, label=f"next iteration's start (η={eta:g} from this start towards the SLERP)"),
        "sft": Line2D([], [], marker="s", ms=8, ls="none", color="black", label="SFT policy (η=0)"),
        "exported": Line2D([], [], marker="o", ms=10, ls="none", markerfacecolor="none", markeredgecolor="black",
                           markeredgewidth=2, label="the exported policy, as measured (kwarp export)"),
    }
    handles += [h for kind, h in legend.items() if kind in shown]
    ax.legend(handles=handles, loc="lower right", fontsize=8.5, framealpha=0.92)
    return _png(fig)


def curves_figure(data: RunData) -> bytes:
    """Reward and KL per member over training steps; iterations back to back on one step axis."""
    from matplotlib import colormaps

    rows = [
        ("reward", "reward (training batch)"),
        ("kl_anchor", "KL to the anchor (nats)"),
        ("kl_init", "KL to θ_init (nats)"),
    ]
    fig = _figure(10.0, 8.0)
    axes = fig.subplots(len(rows), 1, sharex=True)
    member_colors = colormaps["tab10"]
    iter_colors = iteration_colors(len(data.iterations))
    offset = 0.0
    spans = []
    # One window for the whole figure, so that iterations of different lengths are smoothed alike.
    w = smoothing_window(max((len(m.steps) for it in data.iterations for m in it.members), default=0))
    for it in data.iterations:
        logged = max((float(m.series("reward")[0].max()) for m in it.members if m.series("reward")[0].size), default=0.0)
        if logged == 0.0:
            continue
        length = max(logged, float(it.target_steps or 0))  # a running iteration shows its whole span
        spans.append((it.iteration, offset, offset + length))
        for m in it.members:
            for ax, (key, _) in zip(axes, rows, strict=True):
                steps, values = m.series(key)
                if not values.size:
                    continue
                color = member_colors(m.member % 10)
                ax.plot(steps + offset, values, color=color, lw=0.7, alpha=0.25)
                ax.plot(steps + offset, smooth(values, w), color=color, lw=1.8, label=f"member {m.member}")
        offset += length
    if not spans:
        for ax in axes:
            _empty(ax, "no training steps logged yet")
        axes[0].set_title(f"WARP run '{data.run}': training curves", fontsize=12)
        return _png(fig)

    for ax, (key, label) in zip(axes, rows, strict=True):
        for i, lo, hi in spans:
            ax.axvspan(lo, hi, color=iter_colors[i], alpha=0.07, lw=0)
            ax.axvline(lo, color="0.6", lw=0.8)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            _empty(ax, f"'{key}' not logged")
    for i, lo, hi in spans:
        axes[0].text((lo + hi) / 2, 1.01, f"iteration {i}", transform=axes[0].get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=9, color="0.2")
    axes[-1].set_xlabel("training step (iterations back to back)")
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    if uniq:
        axes[0].legend(uniq.values(), uniq.keys(), loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.suptitle(
        f"WARP run '{data.run}': training curves per member (faint: every step; bold: moving average over {w} steps)",
        fontsize=11.5,
    )
    return _png(fig)


def angles_figure(data: RunData) -> bytes:
    """Angles Ω between the members' task vectors, per layer group and iteration."""
    fig = _figure(10.0, 4.8)
    ax = fig.add_subplot()
    colors = iteration_colors(len(data.iterations))
    merged = [(it, c) for it, c in zip(data.iterations, colors, strict=True) if it.angles()]
    ax.set_title(f"WARP run '{data.run}': angle between the members' task vectors, per layer group", fontsize=12)
    if not merged:
        _empty(ax, "no merge yet: angles appear once an iteration's members are merged")
        return _png(fig)

    names: list[str] = []
    for it, _ in merged:
        for name, _ in it.angles():
            if name not in names:
                names.append(name)
    position = {n: k for k, n in enumerate(names)}
    top = 0.0
    if len(names) == 1:  # one angle per iteration (granularity: model): bars
        for k, (it, c) in enumerate(merged):
            angle = it.angles()[0][1]
            ax.bar(k, angle, color=c, width=0.5, label=f"iteration {it.iteration} ({angle:.1f}°)")
            top = max(top, angle)
        ax.set_xticks(range(len(merged)), [f"iteration {it.iteration}" for it, _ in merged])
    else:
        for it, c in merged:
            pts = sorted((position[n], a) for n, a in it.angles())
            mean = sum(a for _, a in pts) / len(pts)
            ax.plot([x for x, _ in pts], [a for _, a in pts], "-o", color=c, ms=4, lw=1.6,
                    label=f"iteration {it.iteration} (mean {mean:.1f}°)")
            top = max(top, max(a for _, a in pts))
        step = max(1, math.ceil(len(names) / 40))
        ticks = list(range(0, len(names), step))
        crowded = len(ticks) > 10
        ax.set_xticks(ticks, [_short_group(names[k]) for k in ticks], rotation=60 if crowded else 0,
                      ha="right" if crowded else "center", fontsize=8)
        ax.set_xlabel("layer group (parameters merged with one angle)")
    # Explained in the legend, where no text can hide a data point.
    ax.axhline(90, color="0.3", ls="--", lw=1,
               label="90°: orthogonal (task vectors of independent RL runs are nearly orthogonal)")
    ax.set_ylim(0, max(100.0, top + 8))
    ax.set_ylabel("angle Ω (degrees)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    return _png(fig)


def _short_group(name: str) -> str:
    """'model.layers.12' -> 'layers.12': the common HF prefix carries no information."""
    for prefix in ("model.", "transformer.", "gpt_neox."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


