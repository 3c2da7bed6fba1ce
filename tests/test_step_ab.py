"""benchmarks/step_ab.py reads each variant's timing from train_step.py's output (the parsing only; the
script's timings are printed, never asserted)."""

from __future__ import annotations

import pytest

from benchmarks.step_ab import parse

OUTPUT = """\
model gpt2 0.99M params, vocab 1000, 8 prompts x 4 samples
baseline mean per step: generate 250.0 ms (37%), score 0.7 ms (0%), reference 170.0 ms (25%), train 260.0 ms (38%), ema 0.9 ms (0%)
baseline ms_per_step 681.6, wall 690.0 ms
kwarp mean per step: generate 110.0 ms (35%), score 0.7 ms (0%), reference 85.0 ms (27%), train 120.0 ms (38%), ema 0.8 ms (0%)
kwarp ms_per_step 316.5, wall 320.1 ms
trl RLOOTrainer ms_per_step 900.0 (0.900s), wall 910.0 ms
"""


def test_parse_reads_each_variant_asked_for() -> None:
    timings = parse(OUTPUT, ["baseline", "kwarp"])
    assert timings["baseline"][0] == 681.6
    assert timings["kwarp"][0] == 316.5
    assert timings["kwarp"][2] == {"generate": 110.0, "score": 0.7, "reference": 85.0, "train": 120.0, "ema": 0.8}
    assert parse(OUTPUT, ["kwarp"]).keys() == {"kwarp"}


def test_parse_refuses_output_without_the_variant() -> None:
    without_baseline = "\n".join(line for line in OUTPUT.splitlines() if not line.startswith("baseline"))
    with pytest.raises(RuntimeError, match="no baseline timing"):
        parse(without_baseline, ["baseline", "kwarp"])
