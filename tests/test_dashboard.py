"""The generated Grafana dashboard: valid as the SDK models Grafana's schema, current in the chart, and
querying only catalogued metrics of the selected run. (tests/test_observability.py runs its queries
against a real Prometheus.)"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import bargauge, prometheus, stat, statetimeline, timeseries, xychart
from grafana_foundation_sdk.models import dashboard as dm

from kwarp.cli import main
from kwarp.observability import dashboard
from kwarp.observability.metrics import RUN_PHASES, catalogue_by_series

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "charts" / "kwarp" / "files" / "dashboard.json"
DOC: dict[str, Any] = json.loads(dashboard.render())
PANELS = list(dashboard.panels(DOC))
QUERIES = dashboard.panel_queries(DOC)
OPTIONS = {
    "timeseries": timeseries.Options,
    "xychart": xychart.Options,
    "state-timeline": statetimeline.Options,
    "bargauge": bargauge.Options,
    "stat": stat.Options,
}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def test_the_chart_ships_the_generated_dashboard() -> None:
    assert SHIPPED.read_text() == dashboard.render(), (
        "charts/kwarp/files/dashboard.json is stale: regenerate it with "
        "`kwarp dashboard -o charts/kwarp/files/dashboard.json`"
    )


def test_kwarp_dashboard_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard"]) == 0
    assert capsys.readouterr().out == dashboard.render()


def test_the_json_round_trips_through_the_sdk_models() -> None:
    """Decoding with the SDK's schema models and encoding again loses and adds nothing, and each panel's
    options and each query decode to their typed models (not the SDK's untyped fallbacks)."""
    register_default_plugins()
    model = dm.Dashboard.from_json(DOC)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == DOC
    assert model.uid == dashboard.UID and model.title and model.schema_version >= 36
    for panel in model.panels or []:
        if isinstance(panel, dm.RowPanel):
            continue
        assert isinstance(panel.options, OPTIONS[panel.type_val]), panel.title
        assert panel.targets and all(isinstance(t, prometheus.Dataquery) for t in panel.targets), panel.title
        assert panel.datasource is not None and panel.datasource.uid == "${datasource}"


def test_panels_are_laid_out_on_the_grid_without_overlap() -> None:
    everything = DOC["panels"]
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    boxes = []
    for p in everything:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        boxes.append((g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"], p["title"]))
    for a, b in itertools.combinations(boxes, 2):
        overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
        assert not overlap, f"{a[4]} overlaps {b[4]}"


def test_the_dashboard_has_the_promised_panels() -> None:
    by_type = {p["type"] for p in PANELS}
    assert by_type <= set(OPTIONS)
    titles = {p["title"] for p in PANELS}
    for wanted in ("Reward", "KL to anchor", "KL to init", "KL-reward front per iteration", "Iteration and phase",
                   "Step time", "Tokens per second", "Merge throughput", "Reconcile latency", "Reconcile errors",
                   "Run progress", "Estimated end", "Estimated time left", "Progress of every run",
                   "Admission wait (Kueue)", "Jobs waiting for admission", "Exported policy"):
        assert wanted in titles
    rows = [p["title"] for p in DOC["panels"] if p["type"] == "row"]
    assert rows == ["Training", "WARP iterations", "Performance", "Operator", "Progress", "Deliverable"]


def _panel(title: str) -> dict[str, Any]:
    return next(p for p in PANELS if p["title"] == title)


def test_progress_panels_show_the_ratio_the_end_and_the_time_left() -> None:
    progress = _panel("Run progress")
    assert progress["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert "kwarp_run_progress_ratio{" in progress["targets"][0]["expr"]
    end = _panel("Estimated end")
    # Grafana's date units take milliseconds; the metric is a unix time in seconds.
    assert end["fieldConfig"]["defaults"]["unit"] == "dateTimeFromNow"
    assert end["targets"][0]["expr"].endswith("* 1000") and end["targets"][0]["instant"]
    left = _panel("Estimated time left")["targets"][0]["expr"]
    assert left.startswith("clamp_min(") and "- time(), 0)" in left


def test_the_exported_policy_panel_shows_its_eta_reward_and_kl() -> None:
    """spec.export's point: the three series status.export sets, for the selected run, as they are now."""
    panel = _panel("Exported policy")
    assert panel["type"] == "stat" and panel["options"]["textMode"] == "value_and_name"
    targets = {t["refId"]: t for t in panel["targets"]}
    assert set(targets) == {"ETA", "REWARD", "KL"}
    for ref, t in targets.items():
        assert t["expr"] == (f"max by (namespace, run) (kwarp_run_export_{ref.lower()}"
                             '{namespace="$namespace", run="$run"})') and t["instant"]  # fmt: skip
    assert [p["title"] for p in _row_panels("Deliverable")] == ["Exported policy"]


def test_admission_panels_are_per_queue_of_the_namespace() -> None:
    wait = {t["refId"]: t for t in _panel("Admission wait (Kueue)")["targets"]}
    assert set(wait) == {"P50", "P95"}
    for ref, q in (("P50", 0.5), ("P95", 0.95)):
        expr = wait[ref]["expr"]
        assert expr.startswith(f"histogram_quantile({q}, sum by (le, queue) (rate(kwarp_operator_admission_wait_seconds_bucket")
        assert "{{queue}}" in wait[ref]["legendFormat"]
    (waiting,) = _panel("Jobs waiting for admission")["targets"]
    assert waiting["expr"] == 'sum by (queue) (kwarp_operator_admission_waiting_jobs{namespace="$namespace"})'
    operator_row = {p["title"] for p in _row_panels("Operator")}
    assert {"Admission wait (Kueue)", "Jobs waiting for admission", "Progress of every run"} <= operator_row


def _all_expressions() -> list[str]:
    variables = [v["query"] for v in DOC["templating"]["list"] if v["type"] == "query"]
    label_values = [re.fullmatch(r"label_values\((.*),\s*\w+\)", q).group(1) for q in variables]
    annotations = [a["expr"] for a in DOC["annotations"]["list"]]
    return [q.expr for q in QUERIES] + label_values + annotations


def test_every_queried_metric_is_in_the_catalogue() -> None:
    known = set(catalogue_by_series())
    used: set[str] = set()
    for expr in _all_expressions():
        names = dashboard.metric_names(expr)
        assert names, expr
        assert names <= known, f"{expr}: {sorted(names - known)} not in kwarp.observability.metrics.CATALOGUE"
        used |= names
    # The dashboard shows every component: trainer, merger, evaluation, run state, operator.
    assert {n.split("_")[1] for n in used} == {"trainer", "merger", "eval", "run", "operator"}


def test_variables_are_defined_and_run_panels_select_one_run() -> None:
    defined = {v["name"] for v in DOC["templating"]["list"]}
    assert defined == {"datasource", "namespace", "run"}
    datasource = next(v for v in DOC["templating"]["list"] if v["name"] == "datasource")
    assert datasource["query"] == "prometheus"
    for expr in _all_expressions():
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined | GRAFANA_BUILTINS, expr
    operator_row = {p["title"] for p in _row_panels("Operator")}
    for q in QUERIES:
        if q.panel in operator_row:
            assert "$run" not in q.expr  # the operator's own metrics carry no run
        else:
            assert 'namespace="$namespace"' in q.expr and 'run="$run"' in q.expr, q.expr


def _row_panels(title: str) -> list[dict[str, Any]]:
    out, current = [], None
    for p in DOC["panels"]:
        if p["type"] == "row":
            current = p["title"]
        elif current == title:
            out.append(p)
    return out


def test_the_front_xychart_plots_kl_against_reward() -> None:
    panel = next(p for p in PANELS if p["type"] == "xychart")
    refs = {t["refId"]: t for t in panel["targets"]}
    assert set(refs) == {"KL", "REWARD"}
    assert all(t["instant"] and t["format"] == "table" for t in refs.values())  # one row per (iteration, η)
    ids = [t["id"] for t in panel["transformations"]]
    assert ids[0] == "merge"  # joins the two tables on their shared labels
    renames = next(t for t in panel["transformations"] if t["id"] == "organize")["options"]["renameByName"]
    (series,) = panel["options"]["series"]
    assert {series["x"], series["y"]} == {renames["Value #KL"], renames["Value #REWARD"]}
    assert (series["x"], series["y"]) == ("KL", "reward")
    assert series["pointColor"]["field"] == "iteration"


def test_the_phase_timeline_names_every_phase() -> None:
    panel = next(p for p in PANELS if p["type"] == "state-timeline")
    (override,) = panel["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byFrameRefID", "options": "PHASE"}
    (mapping,) = override["properties"][0]["value"]
    texts = {int(k): v["text"] for k, v in mapping["options"].items()}
    assert texts == {i + 1: p for i, p in enumerate(RUN_PHASES)}
    phase_query = next(t["expr"] for t in panel["targets"] if t["refId"] == "PHASE")
    assert phase_query == dashboard.phase_code_expr()
    for i, p in enumerate(RUN_PHASES):
        assert f'phase="{p}"}} * {i + 1})' in phase_query


@pytest.mark.parametrize(
    "expr, names",
    [
        ('kwarp_trainer_reward{namespace="$namespace", run="$run"}', {"kwarp_trainer_reward"}),
        ("histogram_quantile(0.9, sum by (le) (rate(a_bucket{x=\"y\"}[$__rate_interval])))", {"a_bucket"}),
        ("sum by (iteration) (a_total) / sum by (iteration) (b_seconds)", {"a_total", "b_seconds"}),
        ('max by (run) ((up{phase="A"} * 1) or (up{phase="B"} * 2))', {"up"}),
        ("a > 1e3 and on (namespace, run) b offset 5m", {"a", "b"}),
        ("time() - max(c) > 600 unless d", {"c", "d"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ],
)
def test_metric_names_finds_the_series_an_expression_reads(expr: str, names: set[str]) -> None:
    assert dashboard.metric_names(expr) == names


def test_substitute_replaces_every_variable_form() -> None:
    out = dashboard.substitute('a{ns="$ns", run="${run}", x="${run:raw}", y="[[ns]]"}[$__rate_interval]',
                               {"ns": "team", "run": "r1", "__rate_interval": "1m"})
    assert out == 'a{ns="team", run="r1", x="r1", y="team"}[1m]'
    with pytest.raises(KeyError):
        dashboard.substitute("a{run=\"$unknown\"}", {})


def test_the_observability_doc_lists_the_catalogue() -> None:
    from kwarp.observability.metrics import CATALOGUE

    doc = (ROOT / "docs" / "observability.md").read_text()
    rows = dict(re.findall(r"^\| `(kwarp_\w+)` \| (\w+) \|", doc, flags=re.MULTILINE))
    assert rows == {d.name: d.kind for d in CATALOGUE}
