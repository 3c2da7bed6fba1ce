#!/usr/bin/env python3
"""Render the main panels of the kwarp Grafana dashboard to a PNG, from a Prometheus that holds a run.

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --run demo --out docs/img/dashboard.png

The queries are the dashboard's own (kwarp.observability.dashboard, the same JSON the chart ships), with the variables
substituted as Grafana would, so the picture shows what the Grafana panels show, without a Grafana. The time
range defaults to the span in which the run has trainer data (--start/--end override it, as Unix seconds).
Exit code 1 when a drawn panel got no data: the picture would silently lie.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from kwarp.observability import dashboard  # noqa: E402
from kwarp.observability.metrics import RUN_PHASES  # noqa: E402

# (panel title, y label); drawn left to right, top to bottom after the front and the timeline.
SERIES_PANELS = (
    ("Reward", "reward"),
    ("KL to anchor", "nats"),
    ("KL to init", "nats"),
    ("Step time", "seconds"),
    ("Tokens per second", "tokens/s"),
    ("Merge throughput", "MiB/s"),
    ("SLERP angle between task vectors", "degrees"),
    ("Run progress", "fraction done"),
    ("Estimated time left", "seconds"),
)
EXPORT_PANEL = "Exported policy"
PHASE_COLORS = {"Pending": "#bbbbbb", "Training": "#3274d9", "Merging": "#8f3bb8", "Evaluating": "#ff9830",
                "Succeeded": "#56a64b", "Failed": "#e02f44", "Suspended": "#f2cc0c"}


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
        return body["data"]["result"]

    def instant(self, expr: str, at: float) -> list[dict[str, Any]]:
        return self._get("query", {"query": expr, "time": at})

    def range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._get("query_range", {"query": expr, "start": start, "end": end, "step": step})


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def run_span(prom: Prom, variables: Mapping[str, str], lookback: str = "7d") -> tuple[float, float] | None:
    """When the run has data: from its trainers' first sample to its tasks' last push plus a scrape interval
    (Pushgateway groups keep their values forever, so the last sample says nothing) or, without a gateway,
    to its last sample, found over the lookback (a run that ended more than 5 minutes ago has no sample at
    `now`), and not later: once the endpoint is gone Prometheus marks its series stale."""
    sel = f'namespace="{variables["namespace"]}", run="{variables["run"]}"'
    now = time.time()
    # Subquery steps fall on multiples of 15 s: evaluated at `now`, a run that began less than 15 s ago has
    # no step after its first sample. Evaluated 15 s later, the last step looks back over every sample.
    ahead = now + 15
    first = prom.instant(f"min(min_over_time(timestamp(kwarp_trainer_step{{{sel}}})[{lookback}:15s]))", ahead)
    if not first:
        return None
    start = float(first[0]["value"][1]) - 15
    pushed = prom.instant(f"max(push_time_seconds{{{sel}}})", now)
    if pushed:
        return start, min(now, float(pushed[0]["value"][1]) + 15)
    last = prom.instant(f"max(max_over_time(timestamp(kwarp_trainer_step{{{sel}}})[{lookback}:15s]))", ahead)
    return start, float(last[0]["value"][1]) if last else now


def draw_series(ax: Any, prom: Prom, queries: list[dashboard.PanelQuery], variables: Mapping[str, str],
                start: float, end: float, step: float, scale: float = 1.0) -> int:
    drawn = 0
    for q in queries:
        for s in prom.range(dashboard.substitute(q.expr, variables), start, end, step):
            points = [(float(t) - start, float(v) * scale) for t, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot([x / 60 for x in xs], ys, label=legend(q.legend, s["metric"]), linewidth=1.2)
            drawn += 1
    return drawn


def draw_front(ax: Any, prom: Prom, queries: list[dashboard.PanelQuery], variables: Mapping[str, str], at: float) -> int:
    values: dict[str, dict[tuple[str, str], float]] = {}
    for q in queries:
        for r in prom.instant(dashboard.substitute(q.expr, variables), at):
            values.setdefault(q.ref_id, {})[(r["metric"]["iteration"], r["metric"]["eta"])] = float(r["value"][1])
    kl, reward = values.get("KL", {}), values.get("REWARD", {})
    by_iteration: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for key in kl.keys() & reward.keys():
        by_iteration[key[0]].append((float(key[1]), kl[key], reward[key]))
    cmap = plt.get_cmap("viridis")
    iterations = sorted(by_iteration, key=int)
    for n, it in enumerate(iterations):
        pts = sorted(by_iteration[it])
        color = cmap(n / max(1, len(iterations) - 1))
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", color=color, label=f"iteration {it}", markersize=5)
        for eta, x, y in pts:
            ax.annotate(f"η={eta:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=color)
    ax.set_xlabel("KL to SFT (nats)")
    ax.set_ylabel("reward")
    return sum(len(v) for v in by_iteration.values())


def draw_timeline(ax: Any, prom: Prom, queries: list[dashboard.PanelQuery], variables: Mapping[str, str],
                  start: float, end: float, step: float) -> int:
    phase_q = next(q for q in queries if q.ref_id == "PHASE")
    iter_q = next(q for q in queries if q.ref_id == "ITERATION")
    phases = prom.range(dashboard.substitute(phase_q.expr, variables), start, end, step)
    iters = prom.range(dashboard.substitute(iter_q.expr, variables), start, end, step)
    drawn = 0
    for row, series, label_of in ((1, phases, lambda v: RUN_PHASES[int(v) - 1]), (0, iters, lambda v: f"i{int(v)}")):
        for s in series:
            segments: list[tuple[float, float, str]] = []
            for t, v in s["values"]:
                label, x = label_of(float(v)), (float(t) - start) / 60
                if segments and segments[-1][2] == label:
                    segments[-1] = (segments[-1][0], x + step / 60, label)
                else:
                    segments.append((x, x + step / 60, label))
            for x0, x1, label in segments:
                if label in PHASE_COLORS:
                    color = PHASE_COLORS[label]
                else:  # iterations alternate between two colours
                    color = "#73bf69" if int(label[1:]) % 2 else "#5794f2"
                ax.broken_barh([(x0, x1 - x0)], (row - 0.4, 0.8), color=color)
                if x1 - x0 > 0.08 * (end - start) / 60:  # name only segments wide enough to hold it
                    ax.text((x0 + x1) / 2, row, label, ha="center", va="center", fontsize=8, color="white")
            drawn += 1
    seen = {RUN_PHASES[int(float(v)) - 1] for s in phases for _, v in s["values"]}
    handles = [Patch(color=c, label=p) for p, c in PHASE_COLORS.items() if p in seen]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(handles) or 1)
    ax.set_yticks([0, 1], ["iteration", "phase"])
    ax.set_xlabel("minutes")
    return drawn


def draw_export(ax: Any, prom: Prom, queries: list[dashboard.PanelQuery], variables: Mapping[str, str], at: float) -> int:
    """The Deliverable row's stat panel: the exported policy's η, reward and KL at the end of the run."""
    lines, found = [], 0
    for q in queries:
        result = prom.instant(dashboard.substitute(q.expr, variables), at)
        value = f"{float(result[0]['value'][1]):.3f}" if result else "no data"
        found += len(result)
        lines.append(f"{q.legend}: {value}")
    ax.axis("off")
    ax.text(0.05, 0.5, "\n".join(lines), fontsize=14, va="center", family="monospace", transform=ax.transAxes)
    return found


def render(prometheus: str, namespace: str, run: str, out: str, start: float | None = None,
           end: float | None = None, rate_interval: str = "1m") -> dict[str, int]:
    """Draw the panels; returns how many series (or front points) each panel got."""
    prom = Prom(prometheus)
    variables = {"datasource": "prometheus", "namespace": namespace, "run": run, "__rate_interval": rate_interval,
                 "__interval": "15s", "__range": "1h"}
    if start is None or end is None:
        span = run_span(prom, variables)
        if span is None:
            raise SystemExit(f"no trainer metrics for run {namespace}/{run} in {prometheus}")
        start = span[0] if start is None else start
        end = span[1] if end is None else end
    step = max(1.0, (end - start) / 300)
    queries = dashboard.panel_queries(json.loads(dashboard.render()))
    by_panel: dict[str, list[dashboard.PanelQuery]] = defaultdict(list)
    for q in queries:
        by_panel[q.panel].append(q)

    fig, axes = plt.subplots(4, 3, figsize=(18, 16))
    fig.suptitle(f"kwarp: WARP run {namespace}/{run}", fontsize=14)
    counts: dict[str, int] = {}
    front_ax, timeline_ax, *series_axes, export_ax = axes.flat
    counts["KL-reward front per iteration"] = draw_front(
        front_ax, prom, by_panel["KL-reward front per iteration"], variables, end
    )
    front_ax.set_title("KL-reward front per iteration")
    counts["Iteration and phase"] = draw_timeline(
        timeline_ax, prom, by_panel["Iteration and phase"], variables, start, end, step
    )
    timeline_ax.set_title("Iteration and phase")
    for ax, (title, ylabel) in zip(series_axes, SERIES_PANELS, strict=True):
        scale = 1 / (1 << 20) if ylabel == "MiB/s" else 1.0
        counts[title] = draw_series(ax, prom, by_panel[title], variables, start, end, step, scale)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("minutes")
    counts[EXPORT_PANEL] = draw_export(export_ax, prom, by_panel[EXPORT_PANEL], variables, end)
    export_ax.set_title(EXPORT_PANEL)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        if ax is not timeline_ax and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--run", required=True, help="WarpRun name (the run label)")
    parser.add_argument("--namespace", default="default", help="namespace label (kwarp run: KWARP_NAMESPACE or local)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--start", type=float, help="Unix seconds (default: the run's first trainer data)")
    parser.add_argument("--end", type=float, help="Unix seconds (default: the run's last trainer data)")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes (default 1m)")
    args = parser.parse_args(argv)
    counts = render(args.prometheus, args.namespace, args.run, args.out, args.start, args.end, args.rate_interval)
    for title, n in counts.items():
        print(f"{title:<36} {n}")
    empty = [t for t, n in counts.items() if n == 0]
    if empty:
        print(f"no data for: {', '.join(empty)}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
