"""The kwarp training step of two commits, timed in alternating processes (an A/B of a change).

    python -P benchmarks/step_ab.py BASE [NEW] --rounds 6 -- --random-model-params 1e6 --vocab 1000 \
        --batch 8 --samples 4 --max-new-tokens 24 --threads 1 --steps 5

Each round runs benchmarks/train_step.py --variants kwarp (the arguments after --) once with the
trainer of BASE and once with that of NEW (default: the working tree), the order reversed every
other round, so a load that changes during the run falls on both alike. A commit's code is
exported (git archive) into a temporary folder laid out as the installed package (kwarp/,
kwarp/trainer, kwarp/merger, kwarp/operator) and put first on PYTHONPATH; the benchmark script
itself is always the working tree's. Printed: each run's CPU ms per step and phases, then per side
the median and range of the runs, and the median of the per-round NEW / BASE ratios.

The two sides compute the same step; whether they do is for the tests to say, not this script.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The editable install maps these packages into kwarp (pyproject's package-dir); an export must too.
SUBPACKAGES = {"trainer": "trainer", "merger": "merger", "operator": "operator"}
STEP = re.compile(r"^kwarp ms_per_step ([0-9.]+)", re.M)
PHASES = re.compile(r"^kwarp mean per step: (.*)$", re.M)
PHASE = re.compile(r"(\w+) ([0-9.]+) ms")


def export(commit: str, into: Path) -> Path:
    """The package tree of `commit` under into/pkg (kwarp with its mapped subpackages inside)."""
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True)
    src = into / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    pkg = into / "pkg"
    shutil.copytree(src / "kwarp", pkg / "kwarp")
    for name, folder in SUBPACKAGES.items():
        shutil.copytree(src / folder, pkg / "kwarp" / name)
    return pkg


def run_side(path: Path | None, bench_args: list[str]) -> tuple[float, str, dict[str, float]]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "benchmarks" / "train_step.py"), "--variants", "kwarp", *bench_args],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    step, phases = STEP.search(out), PHASES.search(out)
    if step is None or phases is None:
        raise RuntimeError(f"no kwarp timing in the benchmark's output:\n{out}")
    return float(step.group(1)), phases.group(1), {k: float(v) for k, v in PHASE.findall(phases.group(1))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="commit of side A")
    p.add_argument("new", nargs="?", help="commit of side B (default: the working tree)")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv[:split])
    bench_args = argv[split + 1 :]
    with tempfile.TemporaryDirectory(prefix="kwarp-ab-") as tmp:
        sides: dict[str, Path | None] = {}
        for label, commit in (("A", args.base), ("B", args.new)):
            if commit is None:
                sides[label] = None
            else:
                (Path(tmp) / label).mkdir()
                sides[label] = export(commit, Path(tmp) / label)
        print(f"A = {args.base}, B = {args.new or 'working tree'}; load average {os.getloadavg()[0]:.1f}", flush=True)
        times: dict[str, list[float]] = {"A": [], "B": []}
        by_phase: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                ms, phases, parsed = run_side(sides[label], bench_args)
                times[label].append(ms)
                by_phase[label].append(parsed)
                print(f"round {r} {label}: {ms:.1f} ms ({phases})", flush=True)
        for label in ("A", "B"):
            t = times[label]
            print(f"{label}: median {statistics.median(t):.1f} ms (range {min(t):.1f}-{max(t):.1f})")
        ratios = [b / a for a, b in zip(times["A"], times["B"], strict=True)]
        print(f"B / A per round: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
              f"load average {os.getloadavg()[0]:.1f}")
        for phase in by_phase["A"][0]:
            per_round = [b[phase] / a[phase] for a, b in zip(by_phase["A"], by_phase["B"], strict=True) if a[phase] > 0]
            a_med = statistics.median(a[phase] for a in by_phase["A"])
            b_med = statistics.median(b[phase] for b in by_phase["B"])
            print(f"  {phase}: A median {a_med:.1f} ms, B median {b_med:.1f} ms, B / A per round median "
                  f"{statistics.median(per_round):.3f} (range {min(per_round):.3f}-{max(per_round):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
