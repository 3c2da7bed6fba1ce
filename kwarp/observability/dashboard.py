"""The Grafana dashboard of kwarp runs, generated in code (grafana-foundation-sdk), and `kwarp dashboard`.

    kwarp dashboard > dashboard.json       # what charts/kwarp/files/dashboard.json holds

Rows: training (reward and KL per member), WARP iterations (the KL-reward front, iteration and phase,
SLERP angles, merge throughput), performance (step time, tokens/s), the operator (runs by phase, reconcile
latency, errors, jobs; every run's progress; Kueue admission wait and waiting Jobs per LocalQueue),
progress (the run's progress, estimated end and time left) and the deliverable (the exported policy's η,
reward and KL). Queries of the Operator row select the namespace; every other query selects one run with
the `namespace` and `run` variables. All use only
metrics of kwarp.observability.metrics.CATALOGUE (tests/test_dashboard.py checks both, and
tests/test_observability.py runs each query against a real Prometheus).

The panels of each row are kwarp/observability/panels.py's; this module lays them out under the
variables and the annotation. The helpers at the end (`panel_queries`, `substitute`, `metric_names`) read
the generated JSON back: the tests and scripts/render_dashboard.py use them, so they check and draw exactly
what Grafana would query.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from kwarp.observability.panels import (  # noqa: F401  (admission_wait_expr, phase_code_expr: the tests read them here)
    DATASOURCE,
    SEL,
    admission_wait_expr,
    export_panel,
    iteration_panels,
    namespace_panels,
    operator_panels,
    performance_panels,
    phase_code_expr,
    progress_panels,
    training_panels,
)

UID = "kwarp-runs"
TITLE = "kwarp: WARP runs"


def build() -> dm.Dashboard:
    builder = (
        dash.Dashboard(TITLE)
        .uid(UID)
        .description("Training, merging, evaluation and operator metrics of kwarp WarpRuns (WARP alignment).")
        .tags(["kwarp", "warp"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .annotation(
            dash.AnnotationQuery()
            .name("Iteration starts")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("rgba(255, 152, 48, 1)")
            .expr(
                f"max by (namespace, run) (kwarp_run_iteration{{{SEL}}})"
                f" > max by (namespace, run) (kwarp_run_iteration{{{SEL}}} offset 1m)"
            )
        )
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dash.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(kwarp_trainer_step, namespace)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            dash.QueryVariable("run")
            .label("Run")
            .datasource(DATASOURCE)
            .query('label_values(kwarp_trainer_step{namespace="$namespace"}, run)')
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
    )
    # Stable ids (Grafana keys panel links and saved views on them), in layout order.
    panel_id = 0
    for title, group in (
        ("Training", training_panels()),
        ("WARP iterations", iteration_panels()),
        ("Performance", performance_panels()),
        ("Operator", [*operator_panels(), *namespace_panels()]),
        ("Progress", progress_panels()),
        ("Deliverable", [export_panel()]),  # last: the panels before keep their ids
    ):
        panel_id += 1
        builder = builder.with_row(dash.Row(title).id(panel_id))
        for panel in group:
            panel_id += 1
            builder = builder.with_panel(panel.id(panel_id))
    return builder.build()


def to_json(board: dm.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data (what Grafana imports)."""
    return json.loads(json.dumps(board, cls=JSONEncoder))


def render() -> str:
    """The dashboard file's exact text: charts/kwarp/files/dashboard.json must equal this."""
    return json.dumps(to_json(build()), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- reading the JSON back


@dataclass(frozen=True)
class PanelQuery:
    panel: str  # panel title
    panel_type: str
    ref_id: str
    expr: str
    legend: str
    instant: bool


def panels(doc: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    for p in doc.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def panel_queries(doc: Mapping[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(
            p.get("title", ""), p.get("type", ""), t.get("refId", ""), t["expr"], t.get("legendFormat", ""),
            bool(t.get("instant")) and not t.get("range"),
        )
        for p in panels(doc)
        for t in p.get("targets", [])
        if t.get("expr")
    ]


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}, ${name:fmt}, [[name]]) as Grafana would; an unknown one
    raises KeyError, so a query cannot silently keep a `$` that Prometheus would reject."""
    return _VARIABLE.sub(lambda m: variables[next(g for g in m.groups() if g)], expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                       "group_right", "inf", "nan", "atan2"})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are neither functions, keywords, label
    names (in matchers or grouping clauses) nor durations."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        following = text[m.end() :].lstrip()
        if following.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function call or an operator keyword
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3, 5m)
        names.add(word)
    return names


# --------------------------------------------------------------------------- CLI


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write the dashboard JSON to FILE instead of printing it"
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    text = render()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0
