"""`kwarp reproduce`: the paper's four findings, re-run on the bundled demo task, judged by pre-registered criteria.

    kwarp reproduce [--scale cpu|quick|gpu] [--seeds N] [--out DIR] [--claims-only]

Per seed k (runs of one seed share θ_sft, the evaluation prompts and the sampling seed):

    warp-s<k>      WARP: EMA anchor, β = 0.1, M = 2, I iterations, next init at η = 0.3; fronts on the
                   η grid 0, 0.1, ..., 1; iteration 0's members also evaluated every few steps
                   (their training trajectories)                  -> findings 1 (EMA), 2, 3, 4
    warp4-s<k>     iteration 0 with M = 4: members 0-1 are warp-s<k>'s (same seeds: identical),
                   members 2-3 trained                                        -> finding 2 (larger M)
    sft-b<β>-s<k>  REINFORCE anchored at θ_sft, β ∈ {0, 0.01, 0.1, 0.3, 1}, same prompt order as
                   member 0, evaluated every few steps                        -> finding 1
    members' own LiTI paths and linear averages, evaluated with `kwarp eval` tool mode -> finding 2

Everything runs through the product's commands (`kwarp prepare`, `train`, `run`, `merge`, `eval`)
into one file store under --out, as a small job graph run two processes at a time (one torch thread
each). Then the claims are computed from the stored evaluation files only: kwarp.run.claims holds the
criteria (fixed before the full run) and kwarp.run.stats the paired bootstrap over prompts and seeds.
Interrupted, the same command continues: finished jobs are recognised from the store and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from kwarp.core.errors import UserError
from kwarp.core.ownership import run_key
from kwarp.run import claims as C
from kwarp.run.rundata import parse_metrics
from kwarp.run.stats import PromptPoint
from kwarp.store import FileStore, layout

GOLD = "kwarp.tasks.sentiment:true_score"
FRONT_ETAS = tuple(round(0.1 * j, 1) for j in range(11))  # finding 4: η grid 0..1 in steps of 0.1
EVAL_BATCH = 128  # prompts per generation batch in every evaluation (one sample each at the CPU scale)


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction. The task's own settings (batch, learning rate, μ) come from its WarpRun."""

    name: str
    seeds: int
    steps: int  # T of every run and iteration
    iterations: int  # I of the WARP runs (finding 4)
    eval_every: int  # trajectory evaluation interval (findings 1 and 3)
    eval_prompts: int  # P of every front, member and linear evaluation
    eval_samples: int  # completions per prompt, every evaluation
    trajectory_prompts: int  # the first P_t of those prompts, for the trajectories
    member_etas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # members' own LiTI paths (η = 1 is the member)
    large_etas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the M = 4 run's front
    replicates: int = 2000
    task_size: str = "small"
    device: str = "cpu"
    parallel: int = 2
    overrides: dict[str, Any] = field(default_factory=dict)  # spec.training/warp settings of this scale

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# The full CPU run and its evaluation sizes are fixed with the criteria (docs/reproduction.md, "Power").
CPU = Scale("cpu", seeds=3, steps=100, iterations=3, eval_every=20, eval_prompts=1000, eval_samples=1,
            trajectory_prompts=500)
QUICK = Scale("quick", seeds=2, steps=30, iterations=3, eval_every=10, eval_prompts=48, eval_samples=2,
              trajectory_prompts=24, member_etas=(0.5,), large_etas=(0.0, 0.5, 1.0), replicates=300)
# One H200: the medium task (27M parameters), the paper's μ = 0.01 with T = 1000 (μT = 10), members
# side by side on the GPU (one process each). Sized by estimate, not run (docs/reproduction.md).
GPU = Scale("gpu", seeds=2, steps=1000, iterations=3, eval_every=200, eval_prompts=1000, eval_samples=2,
            trajectory_prompts=500, task_size="medium", device="cuda", parallel=16,
            overrides={"warp": {"emaRate": 0.01}, "training": {"batchSize": 32, "learningRate": 2e-5, "warmupSteps": 50,
                                                               "checkpointInterval": 250}})
SCALES = {s.name: s for s in (CPU, QUICK, GPU)}


# ------------------------------------------------------------------------------- run documents


def run_names(scale: Scale, k: int) -> dict[str, Any]:
    return {
        "warp": f"warp-s{k}",
        "large": f"warp{C.MEMBERS_LARGE}-s{k}",
        "sft": {b: f"sft-{C.beta_label(b)}-s{k}" for b in C.SFT_BETAS},
    }


# Every document names its run's identity, so that the task commands this module runs itself and the
# `kwarp run` it starts for the rest use one folder per run: <store>/<NAMESPACE>/<name>/<UID>/.
NAMESPACE = "reproduce"
UID = "reproduction"


def folder(name: str) -> str:
    """The store folder of reproduction run `name` (kwarp.core.ownership.run_key)."""
    return run_key(NAMESPACE, name, UID)


def documents(base: dict[str, Any], scale: Scale, k: int, store: str) -> dict[str, dict[str, Any]]:
    """The WarpRun documents of seed k, derived from the task's document (its settings kept)."""

    def variant(name: str, etas: Sequence[float], **warp: Any) -> dict[str, Any]:
        doc = json.loads(json.dumps(base))
        doc["metadata"] = {"name": name, "namespace": NAMESPACE, "uid": UID}
        spec = doc["spec"]
        spec["storage"] = {"url": store}
        spec["warp"].update({"steps": scale.steps, **scale.overrides.get("warp", {}), **warp})
        spec["training"].update({**scale.overrides.get("training", {}), "seed": 100_000 * k})
        spec["evaluation"].update(
            etas=list(etas), prompts=scale.eval_prompts, samplesPerPrompt=scale.eval_samples, every=0,
            trajectoryPrompts=scale.trajectory_prompts, goldReward={"callable": GOLD}, batchSize=EVAL_BATCH,
        )
        return doc

    names = run_names(scale, k)
    docs = {
        names["warp"]: variant(names["warp"], FRONT_ETAS, iterations=scale.iterations, policies=2, anchor="ema", beta=0.1),
        names["large"]: variant(names["large"], scale.large_etas, iterations=1, policies=C.MEMBERS_LARGE, anchor="ema",
                                beta=0.1),
    }
    for beta, name in names["sft"].items():
        docs[name] = variant(name, (0.0, 1.0), iterations=1, policies=1, anchor="sft", beta=beta)
    return docs


# ------------------------------------------------------------------------------- reading the results


def _points(raw: Sequence[dict[str, Any]], prompts: int) -> list[PromptPoint]:
    out = []
    for r in raw:
        p = PromptPoint.from_json(r, prompts)
        if p is None:
            raise UserError("reproduce: an evaluated point has no per-prompt values (evaluated by an older kwarp?)")
        out.append(p)
    return out


def trajectory_points(metrics: bytes, prompts: int) -> dict[int, PromptPoint]:
    """step -> the trainer's evaluation at that step (metrics.jsonl `eval` blocks)."""
    out = {}
    for row in parse_metrics(metrics):
        ev = row.get("eval")
        if isinstance(ev, dict):
            p = PromptPoint.from_json(ev, prompts)
            if p is not None:
                out[int(row["step"])] = p
    return out


def load_inputs(root: Path, scale: Scale) -> dict[str, Any]:
    """Each seed's points, in the two groups the criteria use (fronts; trajectories), and the layout."""
    store = FileStore(root / "store")
    fronts, trajs, steps_seen = [], [], []
    for k in range(scale.seeds):
        names = run_names(scale, k)
        P, Pt = scale.eval_prompts, scale.trajectory_prompts
        front: dict[str, PromptPoint] = {}
        traj: dict[str, PromptPoint] = {}
        for i in range(scale.iterations):
            ev = _require(store.get_json(layout.eval_json(folder(names["warp"]), i)), f"{names['warp']} iteration {i}")
            for p, raw in zip(_points(ev["front"], P), ev["front"], strict=True):
                front[f"front{i}/eta={C.eta_key(raw['eta'])}"] = p
                if i == 0:
                    traj[f"front0/eta={C.eta_key(raw['eta'])}"] = PromptPoint.from_json(raw, Pt)  # type: ignore[assignment]
            if i == 0:
                for p, raw in zip(_points(ev["members"], P), ev["members"], strict=True):
                    front[f"m2/member{raw['member']}"] = p
        front["sft"], traj["sft"] = front["front0/eta=0"], traj["front0/eta=0"]
        ev4 = _require(store.get_json(layout.eval_json(folder(names["large"]), 0)), names["large"])
        for p, raw in zip(_points(ev4["front"], P), ev4["front"], strict=True):
            if raw["eta"] > 0:
                front[f"m{C.MEMBERS_LARGE}/eta={C.eta_key(raw['eta'])}"] = p
        for p, raw in zip(_points(ev4["members"], P), ev4["members"], strict=True):
            front[f"m{C.MEMBERS_LARGE}/member{raw['member']}"] = p
        extra = _require(_read_json(root / "extra" / f"s{k}.json"), f"extra evaluations of seed {k}")
        for m, path in enumerate(extra["members"]):
            prefix = "m2" if m < 2 else f"m{C.MEMBERS_LARGE}"
            for p, raw in zip(_points(path["front"], P), path["front"], strict=True):
                if 0 < raw["eta"] < 1:
                    front[f"{prefix}/member{m}/eta={C.eta_key(raw['eta'])}"] = p
        for key in ("m2", f"m{C.MEMBERS_LARGE}"):
            front[f"{key}/linear"] = _points([extra["linear"][key]], P)[0]

        steps: dict[str, list[int]] = {}
        for m in range(2):
            pts = trajectory_points(store.get_bytes(layout.member_log(folder(names["warp"]), 0, m)) or b"", Pt)
            steps[f"ema{m}"] = sorted(pts)
            traj.update({f"ema{m}/step={t}": p for t, p in pts.items()})
        for beta, run in names["sft"].items():
            pts = trajectory_points(store.get_bytes(layout.member_log(folder(run), 0, 0)) or b"", Pt)
            steps[f"sft-{C.beta_label(beta)}"] = sorted(pts)
            traj.update({f"sft-{C.beta_label(beta)}/step={t}": p for t, p in pts.items()})
        fronts.append(front)
        trajs.append(traj)
        steps_seen.append(steps)
    if any(s != steps_seen[0] for s in steps_seen):
        raise UserError("reproduce: the seeds' trajectories were evaluated at different steps; rerun the missing ones")
    return {
        "front_seeds": fronts,
        "traj_seeds": trajs,
        "layout": {
            "iterations": scale.iterations,
            "etas": list(FRONT_ETAS),
            "member_etas": list(scale.member_etas),
            "large_etas": list(scale.large_etas),
            "steps": steps_seen[0],
        },
    }


def _require(value: Any, what: str) -> Any:
    if value is None:
        raise UserError(f"reproduce: {what} has not been evaluated yet; run `kwarp reproduce` with the same --out")
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def compute_claims(inputs: dict[str, Any], scale: Scale) -> dict[str, Any]:
    findings = C.evaluate_claims(inputs["front_seeds"], inputs["traj_seeds"], inputs["layout"],
                                 replicates=scale.replicates)
    return {"scale": scale.to_json(), "delta": C.DELTA, "delta_kl": C.DELTA_KL, "findings": findings}


# ------------------------------------------------------------------------------- running


@dataclass
class Job:
    """One `kwarp` process of the reproduction; `done` says (from the store) whether it can be skipped."""

    name: str
    args: list[str]
    spec: dict[str, Any] | None = None
    after: tuple[str, ...] = ()
    done: Any = None  # callable () -> bool
    before: Any = None  # callable () -> None, run in the scheduler before the process starts
    result: Path | None = None  # where the process's JSON lines go (tool-mode evaluations)


class Reproduction:
    def __init__(self, out: Path, scale: Scale, console: Console):
        self.out = out.resolve()
        self.scale = scale
        self.console = console
        self.store_root = self.out / "store"
        self.store = FileStore(self.store_root)
        self.env = {**os.environ, "KWARP_NAMESPACE": "reproduce", "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.counter = 0

    # ---------------------------------------------------------------- the job graph

    def jobs(self, base_doc: dict[str, Any]) -> list[Job]:
        s, out = self.scale, []
        device = ["--device", s.device]
        for k in range(s.seeds):
            docs = documents(base_doc, s, k, str(self.store_root))
            names = run_names(s, k)
            warp, large = names["warp"], names["large"]
            traj = ["--eval-every", str(s.eval_every), "--eval-prompts", str(s.trajectory_prompts)]
            for name, doc in docs.items():
                out.append(Job(f"prepare {name}", ["prepare"], doc, done=self._has(layout.base(folder(name)))))
            for m in range(2):  # iteration 0 of the WARP run, with trajectories
                out.append(Job(f"train {warp} m{m}", ["train", "--iteration", "0", "--member", str(m), *traj, *device],
                               docs[warp], after=(f"prepare {warp}",), done=self._has(layout.member_final(folder(warp), 0, m))))
            for name in names["sft"].values():
                out.append(Job(f"train {name}", ["train", "--iteration", "0", "--member", "0", *traj, *device],
                               docs[name], after=(f"prepare {name}",), done=self._has(layout.member_final(folder(name), 0, 0))))
            for m in range(2, C.MEMBERS_LARGE):
                out.append(Job(f"train {large} m{m}", ["train", "--iteration", "0", "--member", str(m), *device],
                               docs[large], after=(f"prepare {large}",), done=self._has(layout.member_final(folder(large), 0, m))))
            warp_members = tuple(f"train {warp} m{m}" for m in range(2))
            large_members = tuple(f"train {large} m{m}" for m in range(2, C.MEMBERS_LARGE))
            for name, doc, after in ((warp, docs[warp], warp_members), (large, docs[large], warp_members + large_members)):
                out.append(Job(f"run {name}", ["run", self._doc_file(doc), "--parallel", "1", "--threads", "1", "--plain", "--no-report"],
                               None, after=after, done=self._has_json(layout.eval_json(folder(name), doc["spec"]["warp"]["iterations"] - 1)),
                               before=(lambda w=warp, lg=large: self.seed_large(w, lg)) if name == large else None))
            out += self.extra_jobs(k, docs[warp], warp_members + large_members)
        # Ready jobs start in list order: the WARP runs' chain (iteration 0's members, then the serial
        # merges, evaluations and later iterations) is the longest, so it goes first; the rest fills in.
        order = ("prepare", "train warp-", "run warp-", "train warp4", "run warp4", "train sft")
        return sorted(out, key=lambda j: next((i for i, p in enumerate(order) if j.name.startswith(p)), len(order)))

    def extra_jobs(self, k: int, doc: dict[str, Any], after: tuple[str, ...]) -> list[Job]:
        """Linear averages (kwarp merge) and the members' LiTI paths (kwarp eval tool mode) of seed k."""
        s = self.scale
        names = run_names(s, k)
        warp, large = names["warp"], names["large"]
        extra = self.out / "extra"
        linear_dirs = {key: extra / f"s{k}-{key}-linear" for key in ("m2", f"m{C.MEMBERS_LARGE}")}
        jobs = []
        for key, count, run in (("m2", 2, warp), (f"m{C.MEMBERS_LARGE}", C.MEMBERS_LARGE, large)):
            members = [a for m in range(count) for a in ("--member", str(self._final(run if m >= 2 else warp, m)))]
            jobs.append(Job(f"linear s{k} {key}", ["merge", "--init", str(self._path(layout.base(folder(warp)))), *members,
                                                  "--method", "linear", "--out", str(linear_dirs[key]), "--overwrite"],
                            after=after, done=lambda d=linear_dirs[key]: (d / "MANIFEST.json").is_file()
                            or (extra / f"s{k}.json").is_file()))
        sp = doc["spec"]
        common = ["eval", "--sft", str(self._path(layout.base(folder(warp)))), "--reward", sp["reward"]["location"],
                  "--gold", GOLD, "--prompts", sp["data"]["eval"], "--num-prompts", str(s.eval_prompts),
                  "--samples", str(s.eval_samples), "--max-new-tokens", str(sp["training"]["maxNewTokens"]),
                  "--max-prompt-tokens", str(sp["training"]["maxPromptTokens"]),
                  "--temperature", str(sp["training"]["temperature"]), "--seed", str(sp["training"]["seed"]),
                  "--batch-size", str(sp["evaluation"]["batchSize"]), "--device", s.device]
        members = [a for m in range(C.MEMBERS_LARGE) for a in ("--model", str(self._final(warp if m < 2 else large, m)))]
        etas = ",".join(f"{e:g}" for e in s.member_etas)  # η = 1 is the member itself, in eval.json
        paths = extra / f"s{k}-members.jsonl"
        linear = extra / f"s{k}-linear.jsonl"
        jobs.append(Job(f"member paths s{k}", [*common, *members, "--etas", etas], after=after, result=paths,
                        done=lambda: paths.is_file() or (extra / f"s{k}.json").is_file()))
        lin_args = [a for d in linear_dirs.values() for a in ("--model", str(d))]
        jobs.append(Job(f"linear eval s{k}", [*common, *lin_args], result=linear,
                        after=tuple(f"linear s{k} {key}" for key in linear_dirs),
                        done=lambda: linear.is_file() or (extra / f"s{k}.json").is_file()))
        jobs.append(Job(f"collect s{k}", [], after=(f"member paths s{k}", f"linear eval s{k}"),
                        done=lambda: (extra / f"s{k}.json").is_file(),
                        before=lambda: self.collect_extra(k, paths, linear, linear_dirs)))
        return jobs

    def collect_extra(self, k: int, paths: Path, linear: Path, linear_dirs: dict[str, Path]) -> None:
        """One file per seed with the members' paths and the linear averages; the merged folders go."""
        members = [json.loads(line) for line in paths.read_text().splitlines() if line.startswith("{")]
        lin = [json.loads(line) for line in linear.read_text().splitlines() if line.startswith("{")]
        result = {"members": members, "linear": dict(zip(linear_dirs, lin, strict=True))}
        target = self.out / "extra" / f"s{k}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, target)
        for d in linear_dirs.values():
            shutil.rmtree(d, ignore_errors=True)

    def _has(self, key: str) -> Any:
        return lambda: self.store.has_checkpoint(key)

    def _has_json(self, key: str) -> Any:
        return lambda: self.store.exists(key)

    def _path(self, key: str) -> Path:
        return self.store_root / key

    def _final(self, run: str, m: int) -> Path:
        return self._path(layout.member_final(folder(run), 0, m))

    def _doc_file(self, doc: dict[str, Any]) -> str:
        path = self.out / "docs" / f"{doc['metadata']['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        return str(path)

    def seed_large(self, source: str, target: str) -> None:
        """Members 0-1 of the M = 4 run are those of the M = 2 run: same seeds, same prompts, same steps."""
        for m in range(2):
            for key_of in (layout.member_ema, layout.member_final):  # final last: it marks the member done
                if not self.store.has_checkpoint(key_of(folder(target), 0, m)):
                    self.store.put_checkpoint(self.store.open_checkpoint(key_of(folder(source), 0, m)), key_of(folder(target), 0, m))
            log = self.store.get_bytes(layout.member_log(folder(source), 0, m))
            if log is not None and not self.store.exists(layout.member_log(folder(target), 0, m)):
                self.store.put_bytes(layout.member_log(folder(target), 0, m), log)

    # ---------------------------------------------------------------- the scheduler

    def execute(self, base_doc: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        load_start = _loadavg()
        (self.out / "extra").mkdir(parents=True, exist_ok=True)
        self.run_jobs(self.jobs(base_doc))
        result = compute_claims(load_inputs(self.out, self.scale), self.scale)
        result |= {"seconds": time.time() - started, "load_start": load_start, "load_end": _loadavg(),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "criteria_commit": criteria_commit()}
        self.write(result)
        return result

    def write(self, result: dict[str, Any]) -> None:
        from kwarp.run.reproduce_report import figure, readme

        (self.out / "claims.json").write_text(json.dumps(result, indent=1))
        inputs = load_inputs(self.out, self.scale)
        figure(inputs, result, self.out / "figure.png")
        (self.out / "README.md").write_text(readme(result))

    def run_jobs(self, jobs: list[Job]) -> None:
        """Run the graph, `scale.parallel` processes at once, in list order among the ready ones."""
        pending = {j.name: j for j in jobs}
        finished: set[str] = set()
        for j in jobs:
            if j.done is not None and j.done():
                finished.add(j.name)
                del pending[j.name]
        running: dict[str, tuple[Job, subprocess.Popen[bytes], Any]] = {}
        while pending or running:
            for name, (_job, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode != 0:
                    for _, (_, other, _) in running.items():
                        other.terminate()
                    raise UserError(f"reproduce: {name} failed (exit {proc.returncode}); see {self.out / 'logs'}")
                finished.add(name)
                self.console.print(f"  done  {name}")
            ready = [j for j in pending.values() if all(a in finished for a in j.after)]
            for job in ready:
                if len(running) >= self.scale.parallel:
                    break
                del pending[job.name]
                if job.before is not None:
                    job.before()
                if not job.args:  # a step of the scheduler itself
                    finished.add(job.name)
                    continue
                running[job.name] = (job, *self.start(job))
            if not ready and not running and pending:
                raise UserError(f"reproduce: jobs wait on jobs that cannot run: {sorted(pending)}")
            time.sleep(0.5)

    def start(self, job: Job) -> tuple[subprocess.Popen[bytes], Any]:
        env = dict(self.env)
        if job.spec is not None:
            env["KWARP_SPEC"] = json.dumps(job.spec)
        self.counter += 1
        log_path = self.out / "logs" / f"{self.counter:03d}-{job.name.replace(' ', '_')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w")  # noqa: SIM115 - closed by run_jobs when the process ends
        stdout = open(job.result, "w") if job.result is not None else log  # noqa: SIM115
        self.console.print(f"  start {job.name}")
        proc = subprocess.Popen([sys.executable, "-P", "-m", "kwarp", *job.args], stdout=stdout, stderr=log, env=env)
        return proc, log


def criteria_commit() -> str | None:
    """The last commit that changed the criteria (kwarp/run/claims.py), when kwarp runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", "claims.py", "stats.py"], cwd=here,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ------------------------------------------------------------------------------- CLI


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                        help="cpu: the committed CPU run (47 CPU-minutes measured, docs/reproduction.md); quick: a small check; "
                        "gpu: the medium task on one GPU")
    parser.add_argument("--quick", action="store_true", help="same as --scale quick")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the scale's)")
    parser.add_argument("--steps", type=int, help="override T of every run")
    parser.add_argument("--out", default="reproduce", help="output folder (runs, claims.json, figure.png)")
    parser.add_argument("--parallel", type=int, help="processes at once (default: the scale's)")
    parser.add_argument("--claims-only", action="store_true", help="recompute claims and figure from a finished --out")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="override the scale's device")
    parser.add_argument("--task-size", choices=["tiny", "small", "medium"], help="override the scale's task size")
    parser.set_defaults(func=_main)


def scale_from(args: argparse.Namespace) -> Scale:
    scale = QUICK if args.quick else SCALES[args.scale]
    for flag, key in (("seeds", "seeds"), ("steps", "steps"), ("parallel", "parallel")):
        value = getattr(args, flag, None)
        if value is not None:
            if value < 1:
                raise UserError(f"--{flag} must be at least 1")
            scale = replace(scale, **{key: value})
    if getattr(args, "device", None):
        scale = replace(scale, device=args.device)
    if getattr(args, "task_size", None):
        scale = replace(scale, task_size=args.task_size)
    return scale


def _main(args: argparse.Namespace) -> int:
    console = Console()
    scale = scale_from(args)
    repro = Reproduction(Path(args.out), scale, console)
    if args.claims_only:
        result = {**(_read_json(repro.out / "claims.json") or {}), **compute_claims(load_inputs(repro.out, scale), scale)}
        repro.write(result)
    else:
        from kwarp.tasks import build, demo_document

        task_folder = build(size=scale.task_size)
        result = repro.execute(demo_document(folder=task_folder))
    for f in result["findings"]:
        color = {"holds": "green", "fails": "red"}.get(f["verdict"], "yellow")
        console.print(f"[{color}]{f['verdict']:>10}[/]  {f['statement']}")
    console.print(f"claims: {repro.out / 'claims.json'}  figure: {repro.out / 'figure.png'}")
    return 0


__all__ = ["CPU", "GPU", "QUICK", "SCALES", "Scale", "compute_claims", "documents", "load_inputs", "register"]
