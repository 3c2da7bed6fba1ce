"""The panels of the kwarp Grafana dashboard, row by row (kwarp/observability/dashboard.py lays them out).

Each `*_panels()` function returns one row's panels in layout order; the helpers above them build the
Prometheus queries and the panel kinds they share. Queries select one run with the `namespace` and `run`
variables (SEL), except the Operator row's, which select the namespace (NS_SEL).
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, timeseries, xychart
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import xychart as xm

from kwarp.observability.metrics import RUN_PHASES

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace="$namespace", run="$run"'  # one run of one namespace
NS_SEL = 'namespace="$namespace"'  # the Operator row: every run and queue of the namespace
MEMBER_LEGEND = "i{{iteration}} m{{member}}"

# Colours of the phase timeline, in RUN_PHASES order.
PHASE_COLORS = ("text", "blue", "purple", "orange", "green", "red", "yellow")


def _query(expr: str, legend: str, ref: str = "A", *, instant: bool = False, table: bool = False) -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    if instant:
        q = q.instant()
    else:
        q = q.range()
    if table:
        q = q.format("table")
    return q


def _legend(placement: cm.LegendPlacement = cm.LegendPlacement.BOTTOM) -> common_b.VizLegendOptions:
    return common_b.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST).placement(placement).show_legend(True)


def _series(title: str, description: str, unit: str, *queries: prom.Dataquery, span: int = 8) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(8)
        .legend(_legend())
        .tooltip(common_b.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        .line_width(1)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(True)
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def phase_code_expr(selector: str = SEL) -> str:
    """The run's phase as a number (1 + its index in RUN_PHASES) from the 0/1 kwarp_run_phase series, for a
    state timeline with value mappings. Each phase term keeps its own label set, so `or` unions them."""
    terms = " or ".join(
        f'(kwarp_run_phase{{{selector}, phase="{p}"}} * {i + 1})' for i, p in enumerate(RUN_PHASES)
    )
    return f"max by (namespace, run) ({terms})"


def _phase_mappings() -> list[dm.ValueMap]:
    return [
        dm.ValueMap(
            options={
                str(i + 1): dm.ValueMappingResult(text=p, color=c, index=i)
                for i, (p, c) in enumerate(zip(RUN_PHASES, PHASE_COLORS, strict=True))
            }
        )
    ]


def _front_panel() -> xychart.Panel:
    """KL (x) against reward (y) at each η of each iteration's front, coloured by iteration.

    Two instant table queries share the labels (namespace, run, iteration, eta, ...), so Grafana's `merge`
    joins them into one row per (iteration, η) holding both values; `organize` names the two value columns
    and `convertFieldType` makes iteration numeric, which the point colour scale needs.
    """
    return (
        xychart.Panel()
        .title("KL-reward front per iteration")
        .description(
            "Reward and KL to the SFT policy along the LiTI path of each iteration (one point per η of "
            "spec.evaluation.etas). Colour: iteration. Up-left is better; later iterations should dominate."
        )
        .datasource(DATASOURCE)
        .span(12)
        .height(10)
        .with_target(_query(f"kwarp_eval_front_kl{{{SEL}}}", "", "KL", instant=True, table=True))
        .with_target(_query(f"kwarp_eval_front_reward{{{SEL}}}", "", "REWARD", instant=True, table=True))
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #KL": "KL", "Value #REWARD": "reward"},
                },
            )
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="convertFieldType",
                options={
                    "conversions": [
                        {"targetField": "iteration", "destinationType": "number"},
                        {"targetField": "eta", "destinationType": "number"},
                    ]
                },
            )
        )
        .show(xm.ScatterShow.POINTS)
        .label(cm.VisibilityMode.AUTO)
        .series_mapping(xm.SeriesMapping.MANUAL)
        .dims(xychart.XYDimensionConfig().frame(0).x("KL"))
        .series(
            [
                xychart.ScatterSeriesConfig()
                .name("front")
                .x("KL")
                .y("reward")
                .show(xm.ScatterShow.POINTS)
                .point_size(common_b.ScaleDimensionConfig().fixed(8).min(4).max(16))
                .point_color(common_b.ColorDimensionConfig().field("iteration").fixed("blue"))
            ]
        )
        .legend(_legend())
        .tooltip(common_b.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE))
        .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.CONTINUOUS_BL_YL_RD))
    )


def _timeline_panel() -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title("Iteration and phase")
        .description("The run's WARP iteration (0-based) and phase over time.")
        .datasource(DATASOURCE)
        .span(12)
        .height(10)
        .with_target(_query(f"max by (namespace, run) (kwarp_run_iteration{{{SEL}}})", "iteration", "ITERATION"))
        .with_target(_query(phase_code_expr(), "phase", "PHASE"))
        .override_by_query("PHASE", [dm.DynamicConfigValue(id_val="mappings", value=_phase_mappings())])
        .show_value(cm.VisibilityMode.AUTO)
        .merge_values(True)
        .fill_opacity(70)
        .line_width(0)
        .row_height(0.8)
        .legend(_legend())
        .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
    )


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval]))"


def _quantile(q: float, histogram: str, by: str = "le", selector: str = "") -> str:
    return f"histogram_quantile({q}, {_rate(f'{histogram}_bucket', by, selector)})"


def _bars(title: str, description: str, unit: str, query: prom.Dataquery, *, span: int = 8,
          max_val: float | None = None) -> bargauge.Panel:  # fmt: skip
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(span)
        .height(8)
        .unit(unit)
        .min(0)
        .with_target(query)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return panel.max(max_val) if max_val is not None else panel


def admission_wait_expr(q: float) -> str:
    """A quantile of the admission waits of the namespace's Kueue Jobs, per LocalQueue, over the window."""
    return _quantile(q, "kwarp_operator_admission_wait_seconds", "le, queue", NS_SEL)


def training_panels() -> list[Any]:
    """Each member's training signals, one series per (iteration, member), and its progress."""
    return [
        _series(
            "Reward", "Mean reward of each member's step completions.", "none",
            _query(f"kwarp_trainer_reward{{{SEL}}}", MEMBER_LEGEND),
        ),
        _series(
            "KL to anchor", "Sequence KL of each member to its anchor (the EMA in WARP), in nats.", "none",
            _query(f"kwarp_trainer_kl_anchor{{{SEL}}}", MEMBER_LEGEND),
        ),
        _series(
            "KL to init", "Sequence KL of each member to the iteration's initial policy θ_init, in nats.", "none",
            _query(f"kwarp_trainer_kl_init{{{SEL}}}", MEMBER_LEGEND),
        ),
        _series(
            "Completion length", "Mean completion length in tokens.", "none",
            _query(f"kwarp_trainer_completion_tokens{{{SEL}}}", MEMBER_LEGEND),
        ),
        _series(
            "Entropy", "Mean per-token entropy of each member's policy on its samples, in nats.", "none",
            _query(f"kwarp_trainer_entropy{{{SEL}}}", MEMBER_LEGEND),
        ),
        (
            bargauge.Panel()
            .title("Member progress")
            .description("Completed steps over the steps T of each member.")
            .datasource(DATASOURCE)
            .span(8)
            .height(8)
            .unit("percentunit")
            .min(0)
            .max(1)
            .with_target(
                _query(
                    f"max by (iteration, member) (kwarp_trainer_step{{{SEL}}})"
                    f" / max by (iteration, member) (kwarp_trainer_steps_target{{{SEL}}})",
                    MEMBER_LEGEND,
                )
            )
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        ),
    ]


def iteration_panels() -> list[Any]:
    """WARP's own steps: the KL-reward front, iteration and phase, and the merges."""
    return [
        _front_panel(),
        _timeline_panel(),
        _series(
            "SLERP angle between task vectors",
            "Median and mean angle (degrees) between the members' task vectors over the SLERP groups of "
            "each iteration's merge; near 90° the members found nearly orthogonal updates.",
            "degree",
            _query(
                f"histogram_quantile(0.5, sum by (le, iteration) (kwarp_merger_slerp_angle_degrees_bucket{{{SEL}}}))",
                "i{{iteration}} median", "MEDIAN",
            ),
            _query(
                f"sum by (iteration) (kwarp_merger_slerp_angle_degrees_sum{{{SEL}}})"
                f" / sum by (iteration) (kwarp_merger_slerp_angle_degrees_count{{{SEL}}})",
                "i{{iteration}} mean", "MEAN",
            ),
            span=12,
        ),
        _series(
            "Merge throughput",
            "Bytes read and written per second by each iteration's merge: over the whole merge once it "
            "finished, and live while it streams.",
            "binBps",
            _query(
                f"sum by (iteration) (kwarp_merger_processed_bytes_total{{{SEL}}})"
                f" / sum by (iteration) (kwarp_merger_duration_seconds{{{SEL}}})",
                "i{{iteration}} whole merge", "WHOLE",
            ),
            _query(_rate("kwarp_merger_processed_bytes_total", "iteration", SEL), "i{{iteration}} live", "LIVE"),
            span=12,
        ),
    ]


def performance_panels() -> list[Any]:
    """Step time and generation throughput of the run's members."""
    return [
        _series(
            "Step time",
            "Wall time of one training step over the run's members (from the step duration histogram).",
            "s",
            _query(_quantile(0.5, "kwarp_trainer_step_duration_seconds", "le", SEL), "p50", "P50"),
            _query(_quantile(0.9, "kwarp_trainer_step_duration_seconds", "le", SEL), "p90", "P90"),
            _query(
                f"sum(rate(kwarp_trainer_step_duration_seconds_sum{{{SEL}}}[$__rate_interval]))"
                f" / sum(rate(kwarp_trainer_step_duration_seconds_count{{{SEL}}}[$__rate_interval]))",
                "mean", "MEAN",
            ),
            span=12,
        ),
        _series(
            "Tokens per second",
            "Generated tokens per second of each member's last step.",
            "none",
            _query(f"kwarp_trainer_tokens_per_second{{{SEL}}}", MEMBER_LEGEND),
            span=12,
        ),
    ]


def operator_panels() -> list[Any]:
    """The operator's own work across the namespace's runs: phases, reconciles, Jobs."""
    return [
        (
            bargauge.Panel()
            .title("Runs by phase")
            .description("WarpRuns of the namespace in each phase, as the operator last reconciled them.")
            .datasource(DATASOURCE)
            .span(6)
            .height(8)
            .unit("none")
            .min(0)
            .with_target(_query('sum by (phase) (kwarp_operator_runs{namespace="$namespace"})', "{{phase}}"))
            .display_mode(cm.BarGaugeDisplayMode.BASIC)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        ),
        _series(
            "Reconcile latency",
            "Time of one reconcile of a WarpRun (all runs).",
            "s",
            _query(_quantile(0.5, "kwarp_operator_reconcile_duration_seconds"), "p50", "P50"),
            _query(_quantile(0.99, "kwarp_operator_reconcile_duration_seconds"), "p99", "P99"),
            span=6,
        ),
        _series(
            "Reconcile errors",
            "Reconciles that raised, per second, by reason. Anything above zero needs a look at the operator log.",
            "ops",
            _query(_rate("kwarp_operator_reconcile_errors_total", "reason"), "{{reason}}"),
            span=6,
        ),
        _series(
            "Jobs, failures and retries",
            "Jobs the operator created, Job attempts seen failed, and retries started, per second, by task kind.",
            "ops",
            _query(_rate("kwarp_operator_jobs_created_total", "kind"), "created {{kind}}", "CREATED"),
            _query(_rate("kwarp_operator_job_failures_total", "kind, reason"), "failed {{kind}}: {{reason}}", "FAILED"),
            _query(_rate("kwarp_operator_retries_total", "kind"), "retry {{kind}}", "RETRIES"),
            span=6,
        ),
    ]


def progress_panels() -> list[Any]:
    """How far the selected run is and when it should end (status.progress in a cluster, the live display of
    `kwarp run`): the ratio over time, the estimated end, and the time left over time."""
    return [
        _series(
            "Run progress",
            "Training steps done over the run's total (all members of all iterations). In a cluster the operator "
            "reads the members' metrics from the store at most every --progress-seconds, so it moves in steps.",
            "percentunit",
            _query(f"max by (namespace, run) (kwarp_run_progress_ratio{{{SEL}}})", "{{run}}"),
        ),
        (
            stat.Panel()
            .title("Estimated end")
            .description(
                "When the run should end at its measured step rate (the operator: training only; kwarp run: "
                "merges and evaluations too). Empty until a rate is measured, and while suspended or failed."
            )
            .datasource(DATASOURCE)
            .span(8)
            .height(8)
            .unit("dateTimeFromNow")
            # Grafana's date units take milliseconds.
            .with_target(_query(f"max by (namespace, run) (kwarp_run_estimated_completion_timestamp_seconds"
                                f"{{{SEL}}}) * 1000", "{{run}}", instant=True))  # fmt: skip
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(cm.BigValueGraphMode.NONE)
            .color_mode(cm.BigValueColorMode.NONE)
        ),
        _series(
            "Estimated time left",
            "Seconds until the estimated end, as the estimate stood at each moment: a line that falls by one "
            "second per second is an estimate that holds.",
            "s",
            _query(f"clamp_min(max by (namespace, run) (kwarp_run_estimated_completion_timestamp_seconds{{{SEL}}})"
                   " - time(), 0)", "{{run}}"),  # fmt: skip
        ),
    ]


def namespace_panels() -> list[Any]:
    """Every run's progress and Kueue's admission of the namespace's Jobs (no run variable)."""
    return [
        _bars(
            "Progress of every run",
            "Training steps done over the total, per WarpRun of the namespace.",
            "percentunit",
            _query(f"max by (run) (kwarp_run_progress_ratio{{{NS_SEL}}})", "{{run}}"),
            max_val=1,
        ),
        _series(
            "Admission wait (Kueue)",
            "Seconds from a Job's creation (suspended) to Kueue's admission, per LocalQueue: median and 95th "
            "percentile of the Jobs admitted in the window (whole seconds, from the API server's timestamps).",
            "s",
            _query(admission_wait_expr(0.5), "p50 {{queue}}", "P50"),
            _query(admission_wait_expr(0.95), "p95 {{queue}}", "P95"),
        ),
        _series(
            "Jobs waiting for admission",
            "Jobs of WarpRuns that Kueue has not admitted yet, per LocalQueue (the runs' Pending condition names "
            "them).",
            "none",
            _query(f"sum by (queue) (kwarp_operator_admission_waiting_jobs{{{NS_SEL}}})", "{{queue}}"),
        ),
    ]


EXPORTED = (("eta", "η"), ("reward", "reward (measured)"), ("kl", "KL to SFT (measured)"))


def export_panel() -> stat.Panel:
    """The policy the run exported (spec.export): its η on the final front and the reward and KL measured
    when it was written (status.export, or export.json under kwarp run). Empty for a run without spec.export."""
    panel = (
        stat.Panel()
        .title("Exported policy")
        .description(
            "The run's deliverable (spec.export): the LiTI η chosen on the final front and the reward and KL "
            "to the SFT policy measured on the written weights (status.export). Compare with the KL-reward front. "
            "Empty until the export is done, and for runs without spec.export."
        )
        .datasource(DATASOURCE)
        .span(24)
        .height(4)
        .decimals(3)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.NONE)
    )
    for key, legend in EXPORTED:
        expr = f"max by (namespace, run) (kwarp_run_export_{key}{{{SEL}}})"
        panel = panel.with_target(_query(expr, legend, key.upper(), instant=True))
    return panel
