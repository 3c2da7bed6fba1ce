"""The kwarp training step of two commits, timed in alternating processes (an A/B of a change).

    python -P benchmarks/step_ab.py BASE [NEW] --rounds 6 -- --random-model-params 1e6 --vocab 1000 \
        --batch 8 --samples 4 --max-new-tokens 24 --threads 1 --steps 5

Each round runs benchmarks/train_step.py --variants kwarp (the arguments after --) once with the
trainer of BASE and once with that of NEW (default: the working tree), the order reversed every
other round, so a load that changes during the run falls on both alike. A commit's code is
exported (git archive) into a temporary folder laid out as the installed package (kwarp/,
kwarp/trainer, kwarp/merger, kwarp/operator) and put first on PYTHONPATH; the benchmark script
itself is the working tree's, or with --own-script each side's own (the baseline variant is defined
by the script: a commit's `python_gelu_` undoes that commit's GELU module). Printed: each run's CPU ms
per step and phases, then per side the median and range of the runs, and the median of the
per-round NEW / BASE ratios.

--variants baseline,kwarp times both variants in each run (taking turns step by step, as the fixed
check does) and prints, besides each variant's A/B, each side's kwarp / baseline ratio within a run:
whether a change to the kwarp variant shows against the baseline variant as it does across commits.

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
PHASE = re.compile(r"(\w+) ([0-9.]+) ms")
VARIANTS = ("baseline", "kwarp")
Timing = tuple[float, str, dict[str, float]]  # ms per step, the phases as printed, the phases parsed


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


def parse(out: str, variants: list[str]) -> dict[str, Timing]:
    """Each variant's ms per step and phases from train_step.py's output."""
    timings = {}
    for name in variants:
        step = re.search(rf"^{name} ms_per_step ([0-9.]+)", out, re.M)
        phases = re.search(rf"^{name} mean per step: (.*)$", out, re.M)
        if step is None or phases is None:
            raise RuntimeError(f"no {name} timing in the benchmark's output:\n{out}")
        timings[name] = (float(step.group(1)), phases.group(1), {k: float(v) for k, v in PHASE.findall(phases.group(1))})
    return timings


def run_side(path: Path | None, script: Path, variants: list[str], bench_args: list[str]) -> dict[str, Timing]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        [sys.executable, "-P", str(script), "--variants", ",".join(variants), *bench_args],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return parse(out, variants)


def report(label_a: str, label_b: str, a: list[Timing], b: list[Timing], title: str) -> None:
    """Medians of each side and the per-round b / a ratios, for the step and each phase."""
    for label, runs in ((label_a, a), (label_b, b)):
        t = [r[0] for r in runs]
        print(f"{title}{label}: median {statistics.median(t):.1f} ms (range {min(t):.1f}-{max(t):.1f})")
    ratios = [rb[0] / ra[0] for ra, rb in zip(a, b, strict=True)]
    print(f"{title}{label_b} / {label_a} per round: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    for phase in a[0][2]:
        per_round = [rb[2][phase] / ra[2][phase] for ra, rb in zip(a, b, strict=True) if ra[2][phase] > 0]
        if not per_round:
            continue
        a_med = statistics.median(r[2][phase] for r in a)
        b_med = statistics.median(r[2][phase] for r in b)
        print(f"  {phase}: {label_a} median {a_med:.1f} ms, {label_b} median {b_med:.1f} ms, {label_b} / {label_a} "
              f"per round median {statistics.median(per_round):.3f} (range {min(per_round):.3f}-{max(per_round):.3f})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="commit of side A")
    p.add_argument("new", nargs="?", help="commit of side B (default: the working tree)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--variants", default="kwarp", help="baseline and/or kwarp, comma-separated (default kwarp)")
    p.add_argument("--own-script", action="store_true",
                   help="run each side's own benchmarks/train_step.py (default: the working tree's for both)")
    args = p.parse_args(argv[:split])
    bench_args = argv[split + 1 :]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        p.error("--variants: baseline and/or kwarp")
    working_script = ROOT / "benchmarks" / "train_step.py"
    with tempfile.TemporaryDirectory(prefix="kwarp-ab-") as tmp:
        sides: dict[str, Path | None] = {}
        scripts: dict[str, Path] = {}
        for label, commit in (("A", args.base), ("B", args.new)):
            scripts[label] = working_script
            if commit is None:
                sides[label] = None
            else:
                (Path(tmp) / label).mkdir()
                sides[label] = export(commit, Path(tmp) / label)
                if args.own_script:
                    scripts[label] = Path(tmp) / label / "src" / "benchmarks" / "train_step.py"
        print(f"A = {args.base}, B = {args.new or 'working tree'}; variants {','.join(variants)}; "
              f"{'each side its own' if args.own_script else 'the working tree'}'s train_step.py; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        runs: dict[str, list[dict[str, Timing]]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                timings = run_side(sides[label], scripts[label], variants, bench_args)
                runs[label].append(timings)
                for name, (ms, phases, _) in timings.items():
                    print(f"round {r} {label} {name}: {ms:.1f} ms ({phases})", flush=True)
        for name in variants:
            report("A", "B", [t[name] for t in runs["A"]], [t[name] for t in runs["B"]], f"{name} ")
        if len(variants) == 2:
            # Within one process the two variants take turns step by step: their ratio on each side.
            for label in ("A", "B"):
                report("baseline", "kwarp", [t["baseline"] for t in runs[label]], [t["kwarp"] for t in runs[label]],
                       f"side {label} ")
        print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
