"""The model card (README.md) of an exported policy, written from its export record. Pure: text in, text out.

The record is what `kwarp export` measured and decided (kwarp-export.json beside the weights, and
<run>/export.json in the run's store): the run, the chosen η and why, the front it was chosen on,
what the front predicted at that η and what the exported weights measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _num(value: Any, fmt: str = ".4f") -> str:
    return "–" if not isinstance(value, int | float) or isinstance(value, bool) else format(value, fmt)


def _pm(point: Mapping[str, Any], key: str) -> str:
    value = point.get(key)
    if value is None:
        return "–"
    err = point.get(f"{key}_stderr")
    return _num(value) + (f" ± {_num(err)}" if err is not None else "")


def model_card(record: Mapping[str, Any]) -> str:
    """README.md for the exported folder: Hugging Face front matter, then what the policy is and how it measured."""
    measured: Mapping[str, Any] = record.get("measured") or {}
    predicted: Mapping[str, Any] = record.get("predicted") or {}
    has_gold = measured.get("gold") is not None or any(p.get("gold") is not None for p in record.get("front") or [])
    run, iteration, eta = record.get("run", "?"), record.get("iteration", "?"), record.get("eta")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [kwarp, warp, rlhf, reinforce]",
        "---",
        "",
        f"# {run}: WARP policy at η = {_num(eta, '.4g')}",
        "",
        f"Exported by kwarp from the WARP run `{run}`: the policy on its final front (iteration {iteration}, "
        "0-based),",
        "",
        f"    θ = (1 − η)·θ_sft + η·θ_slerp,  η = {_num(eta, '.6g')}",
        "",
        "where θ_sft is the run's starting policy and θ_slerp the spherical merge of the last iteration's "
        "members (LiTI, Ramé et al. 2024, *WARP: On the Benefits of Weight Averaged Rewarded Policies*).",
        "",
        f"**Why this η**: {record.get('rule', '?')}.",
        "",
        "## Measured",
        "",
        f"The exported weights, evaluated on {record.get('evaluation', {}).get('prompts', '?')} evaluation prompts "
        "with the run's own settings (the same prompts and seed as the front below):",
        "",
        "| | reward | KL to θ_sft |" + (" gold reward |" if has_gold else ""),
        "| --- | --- | --- |" + (" --- |" if has_gold else ""),
        f"| measured | {_pm(measured, 'reward')} | {_pm(measured, 'kl')} |"
        + (f" {_pm(measured, 'gold')} |" if has_gold else ""),
        f"| front, interpolated | {_num(predicted.get('reward'))} | {_num(predicted.get('kl'))} |"
        + (f" {_num(predicted.get('gold'))} |" if has_gold else ""),
        "",
    ]
    within = record.get("within_budget")
    if within is not None:
        lines += [
            "Within the KL budget (measured KL ≤ budget + one standard error): " + ("yes" if within else "**no**"),
            "",
        ]
    lines += ["## The front it was chosen on", "", "| η | reward | KL | " + ("gold | " if has_gold else ""),
              "| --- | --- | --- | " + ("--- | " if has_gold else "")]  # fmt: skip
    for p in record.get("front") or []:
        mark = " ←" if eta is not None and p.get("eta") == eta else ""
        lines.append(
            f"| {_num(p.get('eta'), 'g')}{mark} | {_pm(p, 'reward')} | {_pm(p, 'kl')} | "
            + (f"{_num(p.get('gold'))} | " if has_gold else "")
        )
    ev = record.get("evaluation") or {}
    source = record.get("source") or {}
    lines += [
        "",
        "## Provenance",
        "",
        f"- run: `{run}`, store `{record.get('store', '?')}`",
        f"- θ_sft: `{source.get('sft', '?')}`; θ_slerp: `{source.get('slerp', '?')}`",
        f"- evaluation: {ev.get('prompts', '?')} prompts × {ev.get('samples', '?')} samples, temperature "
        f"{ev.get('temperature', '?')}, at most {ev.get('max_new_tokens', '?')} new tokens, seed {ev.get('seed', '?')}",
        "- KL is the Monte-Carlo estimate of KL(π ‖ π_sft) per sequence; ± is one standard error.",
        "- weights: safetensors only; `kwarp-export.json` holds these numbers as data.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["model_card"]
