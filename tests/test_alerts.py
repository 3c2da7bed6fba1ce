"""The Prometheus alerting rules the chart ships (charts/kwarp/files/alerts.yaml): `promtool check rules`,
`promtool test rules` cases for each rule (fires when it should, and only then, with the rendered
annotations), and that rules read only catalogue metrics. tests/test_observability.py loads them into a
real Prometheus with the simulated run's series.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kwarp.observability import dashboard
from kwarp.observability.metrics import catalogue_by_series
from tests.prom import binary

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "charts" / "kwarp" / "files" / "alerts.yaml"


def test_alert_rules_pass_promtool_check() -> None:
    out = subprocess.run([binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


RUN_L = {"namespace": "ns", "run": "r"}
MEMBER_L = {**RUN_L, "iteration": "1", "member": "0"}


def _phase(phase: str, values: str) -> dict[str, str]:
    return _series("kwarp_run_phase", {**RUN_L, "phase": phase}, values)


ALERT_CASES: list[dict[str, Any]] = [
    {   # stalled: in Training, the last step at t=0 (1 min), no step since; fires 10 min after 600 s without one
        "interval": "1m",
        "input_series": [
            _series("kwarp_trainer_last_step_timestamp_seconds", MEMBER_L, "60x40"),
            _phase("Training", "1x40"),
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "KwarpRunStalled", "exp_alerts": []},  # 14 min quiet: still pending
            {
                "eval_time": "22m", "alertname": "KwarpRunStalled",
                "exp_alerts": [{
                    "exp_labels": {**RUN_L, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "WarpRun ns/r makes no training progress",
                        "description": "The run is in phase Training but its last training step ended 21m 0s ago. "
                        "Look at its trainer pods: kubectl -n ns get pods -l kwarp.dev/run=r",
                    },
                }],
            },
        ],
    },
    {   # the same silence while Merging is not a stall
        "interval": "1m",
        "input_series": [
            _series("kwarp_trainer_last_step_timestamp_seconds", MEMBER_L, "60x40"),
            _phase("Training", "0x40"),
            _phase("Merging", "1x40"),
        ],
        "alert_rule_test": [{"eval_time": "30m", "alertname": "KwarpRunStalled", "exp_alerts": []}],
    },
    {   # a member that keeps stepping is not stalled, however long the run trains
        "interval": "1m",
        "input_series": [
            _series("kwarp_trainer_last_step_timestamp_seconds", MEMBER_L, "0+60x40"),
            _phase("Training", "1x40"),
        ],
        "alert_rule_test": [{"eval_time": "35m", "alertname": "KwarpRunStalled", "exp_alerts": []}],
    },
    {   # KL to anchor high on an active member
        "interval": "1m",
        "input_series": [
            _series("kwarp_trainer_kl_anchor", MEMBER_L, "60x30"),
            _series("kwarp_trainer_last_step_timestamp_seconds", MEMBER_L, "0+60x30"),
        ],
        "alert_rule_test": [{
            "eval_time": "15m", "alertname": "KwarpMemberKLHigh",
            "exp_alerts": [{
                "exp_labels": {**MEMBER_L, "severity": "warning"},
                "exp_annotations": {
                    "summary": "KL to anchor of r iteration 1 member 0 is 60.0 nats",
                    "description": "Member 0 of iteration 1 of WarpRun ns/r has kept a KL to its anchor above 50 nats "
                    "for 10 minutes. Consider a larger spec.warp.beta or a smaller spec.training.learningRate; "
                    "compare its reward curve for signs of reward hacking.",
                },
            }],
        }],
    },
    {   # a finished member's last KL, kept by the Pushgateway, does not alert forever
        "interval": "1m",
        "input_series": [
            _series("kwarp_trainer_kl_anchor", MEMBER_L, "60x30"),
            _series("kwarp_trainer_last_step_timestamp_seconds", MEMBER_L, "0x30"),
        ],
        "alert_rule_test": [{"eval_time": "25m", "alertname": "KwarpMemberKLHigh", "exp_alerts": []}],
    },
    {   # KL rising 3 nats a minute (0.05 nats/s) from 12 nats
        "interval": "1m",
        "input_series": [
            _series("kwarp_trainer_kl_anchor", MEMBER_L, "12+3x30"),
            _series("kwarp_trainer_last_step_timestamp_seconds", MEMBER_L, "0+60x30"),
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "KwarpMemberKLHigh", "exp_alerts": []},
            {
                "eval_time": "20m", "alertname": "KwarpMemberKLRising",
                "exp_alerts": [{
                    "exp_labels": {**MEMBER_L, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "KL to anchor of r iteration 1 member 0 is rising fast",
                        "description": "The KL of member 0 (iteration 1, WarpRun ns/r) to its anchor grows by 0.050 "
                        "nats/s. Watch its reward and KL panels; stop or suspend the run (spec.suspend: true) if it "
                        "diverges.",
                    },
                }],
            },
        ],
    },
    {   # two steps skipped (nan) at minutes 3 and 4; quiet again 10 minutes after the last
        "interval": "1m",
        "input_series": [_series("kwarp_trainer_nonfinite_steps_total", MEMBER_L, "0 0 0 1 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2")],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "KwarpMemberNonFiniteSteps", "exp_alerts": []},
            {
                "eval_time": "5m", "alertname": "KwarpMemberNonFiniteSteps",
                "exp_alerts": [{
                    "exp_labels": {**MEMBER_L, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "r iteration 1 member 0 skips non-finite steps",
                        "description": "Member 0 of iteration 1 of WarpRun ns/r skipped about 2 step(s) in 10 minutes "
                        "because their loss or gradient was nan or inf. Check that the reward returns finite values; "
                        "lower spec.training.learningRate or maxGradNorm, or train in float32.",
                    },
                }],
            },
            {"eval_time": "18m", "alertname": "KwarpMemberNonFiniteSteps", "exp_alerts": []},
        ],
    },
    {   # reconcile errors that keep coming; then the failed run and a failed Job
        "interval": "1m",
        "input_series": [
            _series("kwarp_operator_reconcile_errors_total", {"reason": "ApiException"}, "0+6x30"),
            _series("kwarp_operator_job_failures_total", {"kind": "train", "reason": "OOMKilled"}, "_x5 1x25"),
            _phase("Failed", "0x5 1x25"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "15m", "alertname": "KwarpOperatorReconcileErrors",
                "exp_alerts": [{
                    "exp_labels": {"reason": "ApiException", "severity": "warning"},
                    "exp_annotations": {
                        "summary": "kwarp operator reconciles keep failing (ApiException)",
                        "description": "Reconciles of WarpRuns have been raising ApiException for 10 minutes "
                        "(0.100 per second). Read the operator's log and the events of the affected WarpRuns.",
                    },
                }],
            },
            {
                "eval_time": "7m", "alertname": "KwarpJobFailures",  # its first failure creates the series at 1
                "exp_alerts": [{
                    "exp_labels": {"kind": "train", "reason": "OOMKilled", "severity": "info"},
                    "exp_annotations": {
                        "summary": "kwarp train Jobs failed (OOMKilled)",
                        "description": "1 train Job attempt(s) failed with OOMKilled in the last 15 minutes. The "
                        "operator retries up to spec.failurePolicy.maxRetries times.",
                    },
                }],
            },
            {"eval_time": "28m", "alertname": "KwarpJobFailures", "exp_alerts": []},  # no failure for 15 min
            {
                "eval_time": "7m", "alertname": "KwarpRunFailed",
                "exp_alerts": [{
                    "exp_labels": {**RUN_L, "severity": "warning"},
                    "exp_annotations": {
                        "summary": "WarpRun ns/r failed",
                        "description": "The run spent its retries. Its status says why: kubectl -n ns get warprun r "
                        "-o jsonpath='{.status.conditions}'",
                    },
                }],
            },
        ],
    },
    {   # Training for 30 min and no trainer ever reported
        "interval": "1m",
        "input_series": [_phase("Training", "1x40")],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "KwarpRunWithoutTrainerMetrics", "exp_alerts": []},
            {
                "eval_time": "35m", "alertname": "KwarpRunWithoutTrainerMetrics",
                "exp_alerts": [{
                    "exp_labels": {**RUN_L, "severity": "info"},
                    "exp_annotations": {
                        "summary": "WarpRun ns/r trains without trainer metrics",
                        "description": "The run has been in phase Training for 30 minutes and no trainer has pushed "
                        "a step. Check that its trainer pods run and reach the Pushgateway (KWARP_PUSHGATEWAY on the "
                        "Jobs).",
                    },
                }],
            },
        ],
    },
]


def test_alert_rules_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    """`promtool test rules`: synthetic series in, expected alerts (labels and rendered annotations) out."""
    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": ALERT_CASES}
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(json.dumps(spec, indent=2))  # JSON is YAML
    out = subprocess.run([binary("promtool"), "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {t["alertname"] for case in ALERT_CASES for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for r in _rules()}, "every rule needs a case"


def _rules() -> list[dict[str, Any]]:
    import yaml

    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_alert_rules_query_only_catalogue_metrics() -> None:
    known = set(catalogue_by_series())
    for rule in _rules():
        assert dashboard.metric_names(rule["expr"]) <= known, rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
