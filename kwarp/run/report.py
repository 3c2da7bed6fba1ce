"""The run report: `kwarp report RUN_OR_FILE` — one HTML page, three figures and summary.json.

    kwarp report warprun.yaml                     # store from spec.storage
    kwarp report my-run --store s3://bucket/runs  # a run name and its store
    kwarp report my-run --store ./runs --out ./my-report

The report reads only what the tasks wrote to the store (docs/internals.md "Files the tasks write"):
per iteration `eval.json` (the LiTI front), `merge.json` (angles between task vectors) and each
member's `metrics.jsonl`, plus the embedded runner's optional `<run>/runner.json` (task timings; for a
cluster run the operator's `<run>/jobs.json`, with each Job's admission wait, kwarp.run.timeline).
Anything may be missing — a run still training, an evaluation not yet written, a truncated last
log line — and the report shows what exists and says what does not.

Outputs, in `out_dir` (default: the store's own `<run>/report/` folder for a file:// store, else
`./<run>-report/`), and always also in the store under `layout.report_prefix(run)`, so the store
holds the latest report of every run whatever its backend:

    report.html   self-contained (figures as data: URIs, inline CSS), written last
    pareto.png    the KL–reward plane: fronts, training trajectories, members, SLERP, next init, SFT
    curves.png    reward and KL per member over training steps
    angles.png    angles between the members' task vectors per layer group
    timeline.png  training progress over time and each task attempt (admission waits hatched), when timed
    summary.json  the numbers behind the figures and the headline (see `build_summary`)

The data model and headline numbers are in `kwarp.run.rundata`, the figures in `kwarp.run.figures`.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kwarp.core.errors import UserError
from kwarp.run.figures import angles_figure, curves_figure, has_gold, pareto_figure
from kwarp.run.rundata import (
    IterationData,
    MemberData,
    Point,
    RunData,
    as_number,
    hypervolume,
    load_run,
    reference_kl,
    reward_at_kl,
)
from kwarp.run.timeline import load_timeline, timeline_figure, timeline_html, timeline_summary
from kwarp.store import FileStore, Store, layout, open_store

if TYPE_CHECKING:

    from kwarp.core.spec import WarpRun, WarpRunSpec


# ------------------------------------------------------------------ summary.json


def build_summary(data: RunData) -> dict[str, Any]:
    """The report's numbers as plain data.

    Per iteration: `front` (points in η order), `members` (held-out eval point and training
    statistics), `slerp` (the front's η = 1 point), `next_init` (θ_init of the next iteration,
    η = litiEta from this θ_init), `best_reward_at_kl` (`reward_at_kl` of the front at the
    headline's `reference_kl`), `hypervolume` (`hypervolume` of the front with floor = SFT reward
    and ceiling = `reference_hv_kl`), `angles_mean_deg` and `timings`.
    `headline` gives those two numbers for the latest evaluated iteration and for the first.
    """
    sft = data.sft
    ref_kl = reference_kl(data)
    fronts = data.with_front
    hv_kl = max((p.kl for it in fronts for p in it.front), default=None)

    def best_at(it: IterationData) -> float | None:
        return reward_at_kl(it.front, ref_kl) if ref_kl is not None and it.front else None

    def hv(it: IterationData) -> float | None:
        if sft is None or hv_kl is None or not it.front:
            return None
        return hypervolume(it.front, sft.reward, hv_kl)

    iterations = []
    for it in data.iterations:
        angles = [a for _, a in it.angles()]
        iterations.append(
            {
                "iteration": it.iteration,
                "status": it.status,
                "front": [p.to_json() for p in it.front],
                "members": [_member_summary(m, it) for m in it.members],
                "slerp": _point_json(it.slerp),
                "init": _point_json(it.init),
                "next_init": _point_json(it.next_init),
                "best_reward_at_kl": best_at(it),
                "hypervolume": hv(it),
                "angles_mean_deg": sum(angles) / len(angles) if angles else None,
                "merge_seconds": as_number((it.merge or {}).get("seconds")),
                "eval_seconds": as_number((it.evaluation or {}).get("seconds")),
            }
        )
    last, first = (fronts[-1], fronts[0]) if fronts else (None, None)
    headline = {
        "iteration": last.iteration if last else None,
        "iterations_evaluated": len(fronts),
        "iterations_total": len(data.iterations),
        "liti_eta": data.liti_eta,
        "reference_kl": ref_kl,
        "reference_hv_kl": hv_kl,
        "sft": _point_json(sft),
        "best_reward_at_kl": best_at(last) if last else None,
        "best_reward_at_kl_first": best_at(first) if first else None,
        "hypervolume": hv(last) if last else None,
        "hypervolume_first": hv(first) if first else None,
        "slerp": _point_json(last.slerp) if last else None,
        "wall_seconds": _run_wall_seconds(data),
    }
    settings = (data.document or {}).get("spec", data.document) or {}
    return {"run": data.run, "iterations": iterations, "settings": settings, "headline": headline,
            "export": export_summary(data.export)}


def export_summary(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The exported policy (export.json) without its copy of the front: where, which η and why, what it measured."""
    if not record:
        return None
    keys = ("location", "eta", "rule", "request", "between", "predicted", "measured", "within_budget", "iteration")
    return {k: record.get(k) for k in keys}


def _member_summary(m: MemberData, it: IterationData) -> dict[str, Any]:
    timing = it.timings.get(f"i{it.iteration}-m{m.member}")
    seconds = timing.seconds if timing is not None and timing.seconds is not None else m.training_seconds()
    steps, _ = m.series("reward")
    return {
        "member": m.member,
        "done": m.done,
        "eval": _point_json(m.final),
        "train": {
            "steps": int(steps.max()) if steps.size else 0,
            "reward_last": m.last("reward"),
            "kl_anchor_last": m.last("kl_anchor"),
            "kl_init_last": m.last("kl_init"),
            "tokens_per_second": m.last("tokens_per_second", fraction=1.0),
            "seconds": seconds,
            "attempts": timing.attempts if timing else None,
        },
    }


def _point_json(p: Point | None) -> dict[str, float | None] | None:
    return None if p is None else p.to_json()


def _run_wall_seconds(data: RunData) -> float | None:
    starts = [t.start for t in data.run_timings if t.start is not None]
    ends = [t.end for t in data.run_timings if t.end is not None]
    return max(ends) - min(starts) if starts and ends else None


# ------------------------------------------------------------------ HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1120px; padding: 1.5em 2em 4em; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #dde3e8; }
h3 { margin-bottom: .4em; }
.meta { color: #5b6670; } .caption { color: #38424b; max-width: 60em; }
.headline { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.card { border: 1px solid #dde3e8; border-radius: 6px; padding: .6em 1em; min-width: 12em; background: #f8fafb; }
.card .v { font-size: 1.35em; font-weight: 600; } .card .k { color: #5b6670; font-size: .85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eef1f3; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #dde3e8; padding: .3em .7em; text-align: right; }
th { background: #f1f4f6; } td:first-child, th:first-child { text-align: left; }
.status { display: inline-block; padding: 0 .5em; border-radius: 4px; font-size: .85em; background: #e9eef2; }
.status.complete { background: #d9f2e3; } .missing { color: #8a949c; font-style: italic; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; border-radius: 6px; }
"""


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(name)}">'


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def _pm(value: float | None, err: float | None) -> str:
    if value is None:
        return "–"
    return _fmt(value) if err is None else f"{_fmt(value)} ± {_fmt(err)}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _iteration_html(it: IterationData, summary: dict[str, Any], eta: float) -> str:
    e = html.escape
    parts = [f'<h3>Iteration {it.iteration} <span class="status {e(it.status)}">{e(it.status)}</span></h3>']
    if it.status == "pending":
        parts.append('<p class="missing">not started yet</p>')
        return "\n".join(parts)
    rows = []
    for m, ms in zip(it.members, summary["members"], strict=True):
        train = ms["train"]
        attempts = f" ({train['attempts']} attempts)" if (train["attempts"] or 1) > 1 else ""
        rows.append(
            "<tr>"
            f"<td>member {m.member}{'' if m.done else ' (training)'}</td>"
            f"<td>{_pm(m.final.reward, m.final.reward_stderr) if m.final else '–'}</td>"
            f"<td>{_pm(m.final.kl, m.final.kl_stderr) if m.final else '–'}</td>"
            f"<td>{_pm(m.final.gold, m.final.gold_stderr) if m.final else '–'}</td>"
            f"<td>{_fmt(train['reward_last'])}</td><td>{_fmt(train['kl_anchor_last'])}</td>"
            f"<td>{train['steps']}{f' / {it.target_steps}' if it.target_steps else ''}</td>"
            f"<td>{format_seconds(train['seconds'])}{attempts}</td>"
            f"<td>{_fmt(train['tokens_per_second'], 1) if train['tokens_per_second'] is not None else '–'}</td>"
            "</tr>"
        )
    for label, p in (("SLERP of the members (η=1)", it.slerp), (f"next init (η={eta:g} from θ_init)", it.next_init),
                     ("this iteration's θ_init", it.init)):
        if p is not None:
            rows.append(f"<tr><td>{e(label)}</td><td>{_pm(p.reward, p.reward_stderr)}</td>"
                        f"<td>{_pm(p.kl, p.kl_stderr)}</td><td>{_pm(p.gold, p.gold_stderr)}</td><td colspan=5></td></tr>")
    parts.append(
        "<table><tr><th>policy</th><th>eval reward</th><th>eval KL to SFT (nats)</th><th>eval gold reward</th>"
        "<th>train reward (last 10%)</th><th>KL to anchor (last 10%)</th><th>steps</th><th>training time</th>"
        "<th>tokens/s</th></tr>" + "".join(rows) + "</table>"
    )
    if it.front:
        head = "".join(f"<th>η={p.eta:g}</th>" if p.eta is not None else "<th>?</th>" for p in it.front)
        rew = "".join(f"<td>{_pm(p.reward, p.reward_stderr)}</td>" for p in it.front)
        kl = "".join(f"<td>{_pm(p.kl, p.kl_stderr)}</td>" for p in it.front)
        gold = ""
        if any(p.gold is not None for p in it.front):
            cells = "".join(f"<td>{_pm(p.gold, p.gold_stderr)}</td>" for p in it.front)
            gold = f"<tr><td>gold reward</td>{cells}</tr>"
        parts.append(f"<table><tr><th>LiTI front</th>{head}</tr><tr><td>reward</td>{rew}</tr>"
                     f"<tr><td>KL to SFT (nats)</td>{kl}</tr>{gold}</table>")
    else:
        parts.append('<p class="missing">front not evaluated yet</p>')
    merge_t = it.timings.get(f"i{it.iteration}-merge")
    eval_t = it.timings.get(f"i{it.iteration}-eval")
    merge_s = merge_t.seconds if merge_t and merge_t.seconds is not None else summary["merge_seconds"]
    eval_s = eval_t.seconds if eval_t and eval_t.seconds is not None else summary["eval_seconds"]
    bits = [f"merge {format_seconds(merge_s)}", f"evaluation {format_seconds(eval_s)}"]
    if summary["angles_mean_deg"] is not None:
        bits.append(f"mean angle between task vectors {summary['angles_mean_deg']:.1f}°")
    if summary["best_reward_at_kl"] is not None:
        bits.append(f"front reward at the reference KL {_fmt(summary['best_reward_at_kl'])}")
    parts.append(f"<p class=meta>{e('; '.join(bits))}</p>")
    return "\n".join(parts)


def _export_html(export: Mapping[str, Any] | None) -> str:
    """The exported policy: where it is, its η and why, and what it measured against what the front predicted."""
    if not export:
        return ""
    e = html.escape
    m, p = export.get("measured") or {}, export.get("predicted") or {}
    gold = m.get("gold") is not None
    rows = (f"<tr><td>measured</td><td>{_pm(m.get('reward'), m.get('reward_stderr'))}</td>"
            f"<td>{_pm(m.get('kl'), m.get('kl_stderr'))}</td>"
            + (f"<td>{_pm(m.get('gold'), m.get('gold_stderr'))}</td>" if gold else "") + "</tr>"
            f"<tr><td>front, interpolated</td><td>{_fmt(p.get('reward'))}</td><td>{_fmt(p.get('kl'))}</td>"
            + (f"<td>{_fmt(p.get('gold'))}</td>" if gold else "") + "</tr>")  # fmt: skip
    within = export.get("within_budget")
    verdict = "" if within is None else (" The measured KL is within the budget (one standard error allowed)."
                                         if within else " <b>The measured KL exceeds the budget.</b>")  # fmt: skip
    eta = export.get("eta")
    return f"""<h2>Exported policy</h2>
<p>η = {_fmt(eta)} on the final front ({e(str(export.get("rule", "")))}), written to
<code>{e(str(export.get("location", "")))}</code> with its model card (README.md).{verdict}
The open circle in the KL–reward plane above.</p>
<table><tr><th></th><th>reward</th><th>KL to SFT (nats)</th>{"<th>gold reward</th>" if gold else ""}</tr>{rows}</table>"""


def render_html(data: RunData, summary: dict[str, Any], figures: Mapping[str, bytes], timeline: str = "") -> str:
    e = html.escape
    h = summary["headline"]
    eta = data.liti_eta
    cards = [
        ("iterations evaluated", f"{h['iterations_evaluated']} / {h['iterations_total']}"),
        (f"front reward at KL {_fmt(h['reference_kl'])} (iteration {h['iteration']})", _fmt(h["best_reward_at_kl"])),
        ("same, first iteration", _fmt(h["best_reward_at_kl_first"])),
        (f"hypervolume (iteration {h['iteration']})", _fmt(h["hypervolume"])),
        ("SFT reward", _fmt((h["sft"] or {}).get("reward"))),
        ("run wall time", format_seconds(h["wall_seconds"])),
    ]
    card_html = "".join(f'<div class=card><div class=v>{e(v)}</div><div class=k>{e(k)}</div></div>' for k, v in cards)
    settings = (
        f"<pre>{e(yaml.safe_dump(data.document, sort_keys=False, allow_unicode=True))}</pre>"
        if data.document
        else '<p class="missing">the WarpRun document was not given; run <code>kwarp report warprun.yaml</code> '
        "to include it</p>"
    )
    iterations = "\n".join(
        _iteration_html(it, s, eta) for it, s in zip(data.iterations, summary["iterations"], strict=True)
    ) or '<p class="missing">no iteration has started</p>'
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    gold = (
        f"""<h2>Gold reward</h2>
<figure>{_img("gold.png", figures["gold.png"], "the fronts scored by the gold reward")}
<figcaption class=caption>The same policies scored by the run's gold reward (<code>evaluation.goldReward</code>),
a held-out judge the policies were never trained on, on the same completions. Where the reward model's front
keeps rising while the gold front flattens or falls, the policy has started to exploit the reward
model.</figcaption></figure>"""
        if "gold.png" in figures
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kwarp report: {e(data.run)}</title>
<style>{_CSS}</style></head>
<body>
<h1>WARP run <code>{e(data.run)}</code></h1>
<p class=meta>Report generated {e(generated)}. WARP aligns a policy in iterations: M policies are trained with
reinforcement learning from the same start, their weights are merged (SLERP), and the merge is interpolated back
towards the start (LiTI) to trace a trade-off between reward and drift from the SFT policy.</p>
<div class=headline>{card_html}</div>
<p class=caption><b>Front reward at KL k</b>: the reward of an iteration's front at KL k, interpolated linearly
between its measured points; k is the KL of the first iteration's policy at η = {eta:g} (where the next iteration
starts), so the number compares iterations at equal drift. <b>Hypervolume</b>: the area of the KL–reward plane
that the front's points dominate (less KL and more reward), above the SFT policy's reward and left of KL
{_fmt(h['reference_hv_kl'])} nats, the largest KL of any front; larger is better.</p>

<h2>Pareto fronts</h2>
<figure>{_img("pareto.png", figures["pareto.png"], "KL-reward Pareto fronts")}
<figcaption class=caption>Each coloured line is one iteration's front: the policies between the SFT model (η = 0)
and the merged policy (η = 1), measured on held-out prompts; up and to the left is better (more reward for less
drift from the SFT policy). Bars are ± one standard error.</figcaption></figure>

{gold}
{_export_html(summary.get("export"))}
<h2>Iterations</h2>
{iterations}

{timeline}
<h2>Training curves</h2>
<figure>{_img("curves.png", figures["curves.png"], "training curves")}
<figcaption class=caption>Per member: reward of the sampled training batches, KL to the EMA anchor the policy is
penalised against, and KL to the iteration's starting policy.</figcaption></figure>

<h2>Angles between task vectors</h2>
<figure>{_img("angles.png", figures["angles.png"], "angles between task vectors")}
<figcaption class=caption>The angle between the members' weight updates, per layer group. Near 90°, the updates
are nearly orthogonal: SLERP then keeps their norm where a plain average would shrink it.</figcaption></figure>

<h2>Settings</h2>
{settings}
</body></html>
"""


# ------------------------------------------------------------------ writing


def default_out_dir(store: Store, run: str) -> Path:
    """The store's own report folder for a file:// store; ./<run>-report otherwise."""
    if isinstance(store, FileStore):
        return store.path(layout.report_prefix(run))
    return Path.cwd() / f"{run.replace('/', '-')}-report"


def write_report(
    store: Store,
    run_name: str,
    spec: WarpRun | WarpRunSpec | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write report.html, the figures and summary.json for a run; return the path of report.html.

    Files go to `out_dir` (default: `default_out_dir`) and, unless that folder already is the
    store's report folder, to the store under `layout.report_prefix(run_name)` too. report.html is
    written last in both places, so a reader that finds it finds the rest. Safe to call while the
    run is in progress: it shows what exists.
    """
    data = load_run(store, run_name, spec)
    summary = build_summary(data)
    figures = {
        "pareto.png": pareto_figure(data),
        "curves.png": curves_figure(data),
        "angles.png": angles_figure(data),
    }
    if has_gold(data):
        figures["gold.png"] = pareto_figure(data, score="gold")
    # Progress over time, task attempts and admission waits (the operator's jobs.json, the runner's runner.json).
    tl = load_timeline(store, run_name, data.iterations)
    summary["timeline"] = timeline_summary(tl)
    if (png := timeline_figure(tl)) is not None:
        figures["timeline.png"] = png
    section = timeline_html(tl, _img("timeline.png", png, "progress and task timeline") if png else None)
    files: dict[str, bytes] = dict(figures)
    files["summary.json"] = json.dumps(summary, indent=1, allow_nan=False).encode()
    files["report.html"] = render_html(data, summary, figures, section).encode()

    out = Path(out_dir).expanduser().resolve() if out_dir is not None else default_out_dir(store, run_name)
    in_store = isinstance(store, FileStore) and out == store.path(layout.report_prefix(run_name))
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():  # dicts keep insertion order: report.html comes last
        _write_atomic(out / name, content)
    if not in_store:
        prefix = layout.report_prefix(run_name)
        for name, content in files.items():
            store.put_bytes(prefix + name, content)
    return out / "report.html"


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(content)
    os.replace(tmp, path)


# ------------------------------------------------------------------ CLI


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_OR_FILE",
                        help="a WarpRun YAML file (its store is spec.storage), or a run name with --store")
    parser.add_argument("--store", metavar="URL",
                        help="store holding the run: a path, file:///abs/path or s3://bucket/prefix")
    parser.add_argument("--namespace", metavar="NS",
                        help="the run's namespace (default: the document's, else $KWARP_NAMESPACE, else local)")
    parser.add_argument("--uid", help="the run's uid, when the store holds several runs of this name (default: the newest)")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: the run's report/ folder for a local store, else ./<run>-report/)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from kwarp.core.ownership import namespace_of
    from kwarp.core.spec import load
    from kwarp.run.identity import report_key

    spec = None
    if Path(args.run).is_file():
        spec = load(args.run)
        name = spec.name
        store = open_store(args.store or spec.spec.storage.url, spec.spec.storage)
        namespace = args.namespace or namespace_of(spec, os.environ)
    elif args.run.endswith((".yaml", ".yml", ".json")):
        raise UserError(f"{args.run}: no such file; give a WarpRun YAML file or a run name with --store URL")
    else:
        if not args.store:
            raise UserError(f"'{args.run}' is not a file: to report a run by name, add --store URL")
        name, store = args.run, open_store(args.store)
        namespace = args.namespace or os.environ.get("KWARP_NAMESPACE") or "local"
    run = report_key(store, name, namespace=namespace, uid=args.uid, run=spec)
    if run is None or not store.list(layout.run_prefix(run)):
        raise UserError(f"nothing stored for run '{name}' (namespace {namespace}) under {store.describe()}: "
                        "check the run name, --namespace and the store")  # fmt: skip

    path = write_report(store, run, spec, args.out)
    summary = json.loads((path.parent / "summary.json").read_text())
    h = summary["headline"]
    print(f"report: {path}")
    print(f"iterations evaluated: {h['iterations_evaluated']}/{h['iterations_total']}")
    if h["best_reward_at_kl"] is not None:
        print(
            f"front reward at KL {h['reference_kl']:.3f}: {h['best_reward_at_kl']:.3f} "
            f"(iteration {h['iteration']}; first iteration {_fmt(h['best_reward_at_kl_first'])}); "
            f"hypervolume {_fmt(h['hypervolume'])}"
        )
    print(f"admission: {summary['timeline']['admission_note']}")
    return 0
