"""`kwarp export`: the deliverable of a run — one policy on its final front, chosen for the drift one accepts.

    kwarp export RUN_OR_FILE --kl-budget K | --eta E --out DIR|s3://bucket/key      (tool)
    kwarp export [--spec FILE]                                                     (task: spec.export)

RUN_OR_FILE is a WarpRun document (its run's folder in spec.storage is found as `kwarp report` finds
it: the newest run of that namespace, name and spec), or a run's folder in a store
(`<root>/<namespace>/<name>/<uid>`, or `<root>/<name>` of a store written before runs had their own
folders; a folder or an s3:// URL: the document the run recorded there, `warprun.json`, is read).
The task is what the plan starts after the last evaluation when the WarpRun has spec.export (a
local process or the Job `<run>-export`): it exports to spec.export.to (default
<storage.url>/<run's folder>/export) and writes <run's folder>/export.json last, which marks it done.

1. Choose η on the final front (the last iteration's eval.json): with --kl-budget the most reward
   whose KL stays within K, interpolating between evaluated η (kwarp.core.front, pure); with --eta
   that η.
2. Write θ = (1 − η)·θ_sft + η·θ_slerp (LiTI between the run's base and the last SLERP, streamed
   tensor by tensor by the merger) as a Hugging Face folder: safetensors, config, tokenizer.
3. Evaluate the written weights with the run's evaluation settings (same prompts, seed, reward,
   gold reward as the front), so the KL and reward it claims are measured, not interpolated.
4. Add README.md (the model card), kwarp-export.json (the same numbers as data) and the manifest,
   then publish: a local folder is replaced atomically, an s3:// key is published as a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kwarp.core.errors import UserError
from kwarp.core.front import Choice, FrontError, at_eta, points_of, table, within_budget
from kwarp.core.ownership import namespace_of, store_key
from kwarp.core.plan import Task
from kwarp.core.spec import WarpRun, load, parse
from kwarp.store import Store, layout, open_store
from kwarp.store.fencing import Fence, claim_task

RECORD = "kwarp-export.json"
CARD = "README.md"


# ------------------------------------------------------------------ which run


def resolve_run(source: str) -> WarpRun:
    """A WarpRun document, or the run a store holds at `<root>/<run>` (its recorded warprun.json), with
    its identity (metadata.namespace and uid) when the store holds it in a folder of its own."""
    import os

    from kwarp.run.identity import report_key, with_identity

    path = Path(source)
    if "://" not in source and path.is_file():
        run = load(path)
        store = open_store(run.spec.storage.url, run.spec.storage)
        namespace = namespace_of(run, os.environ)
        key = report_key(store, run.name, namespace=namespace, uid=run.metadata.uid, run=run)
        if key is not None and key.count("/") == 2:
            run = with_identity(run, namespace, key.rsplit("/", 1)[1])
        return run
    root, _, name = source.rstrip("/").rpartition("/")
    if not name:
        raise UserError(f"{source}: give a WarpRun file or a run's location in its store (<root>/<run>)")
    store = open_store(root or ".")
    raw = store.get_json(layout.spec_json(name))
    if raw is None:
        raise UserError(
            f"{source}: neither a WarpRun file nor a run in a store (no {layout.spec_json(name)} in {store.describe()})"
        )
    run = parse(raw, source=f"{store.describe()}/{layout.spec_json(name)}")
    # The store is where the run was found (it may have moved since it was recorded): the location minus
    # the run's own folder (<namespace>/<name>/<uid> when the run recorded its identity).
    url = store.url
    key = store_key(run)
    if run.metadata.uid and source.rstrip("/").endswith("/" + key):
        url = source.rstrip("/")[: -len(key) - 1]
    storage = run.spec.storage.model_copy(update={"url": url})
    return run.model_copy(update={"spec": run.spec.model_copy(update={"storage": storage})})


def final_front(run: WarpRun, store: Store) -> tuple[int, dict[str, Any]]:
    """(last iteration, its eval.json); a UserError naming the missing step when it is not there."""
    last = run.spec.warp.iterations - 1
    folder = store_key(run)
    key = layout.eval_json(folder, last)
    evaluation = store.get_json(key)
    if evaluation is None:
        raise UserError(
            f"run '{run.name}' has no final front yet ({store.describe()}/{key}): finish the run "
            f"(kwarp run), or evaluate it (kwarp eval --iteration {last})"
        )
    for key in (layout.base(folder), layout.slerp(folder, last)):
        if not store.has_checkpoint(key):
            raise UserError(f"run '{run.name}': checkpoint {store.describe()}/{key} is missing or incomplete")
    return last, evaluation


def choose(evaluation: dict[str, Any], *, kl_budget: float | None, eta: float | None) -> Choice:
    try:
        points = points_of(evaluation)
        return within_budget(points, kl_budget) if kl_budget is not None else at_eta(points, float(eta or 0.0))
    except FrontError as err:
        raise UserError(str(err)) from None


# ------------------------------------------------------------------ the export


def export_policy(
    run: WarpRun,
    out: str | None,
    *,
    kl_budget: float | None = None,
    eta: float | None = None,
    device: str | None = None,
    threads: int = 1,
    say: Any = print,
    fence: Fence | None = None,
) -> dict[str, Any]:
    """Choose, write, measure, describe and publish the policy; return its export record. `out` None: into the
    run's own store at <run>/export. `fence`: the export task's lease (the tool mode has none)."""
    from kwarp.core.checkpoints import write_manifest
    from kwarp.merger.streaming import Output, interpolate_checkpoints
    from kwarp.run.card import model_card
    from kwarp.run.evaluate import describe, evaluate_checkpoint

    if (kl_budget is None) == (eta is None):
        raise UserError("give exactly one of --kl-budget K or --eta E")
    started = time.perf_counter()
    spec, name = run.spec, run.name
    store = open_store(spec.storage.url, spec.storage)
    iteration, evaluation = final_front(run, store)
    location = out if out is not None else f"{store.url.rstrip('/')}/{layout.export(store_key(run))}"
    choice = choose(evaluation, kl_budget=kl_budget, eta=eta)
    predicted = {"reward": choice.reward, "kl": choice.kl, "gold": choice.gold}
    say(f"kwarp export: {choice.rule}: η = {choice.eta:.4g} "
        + (f"(front predicts reward {choice.reward:.4f}, KL {choice.kl:.4f})" if choice.reward is not None and choice.kl
           is not None else "(outside the evaluated η)"))  # fmt: skip
    base_key, slerp_key = layout.base(store_key(run)), layout.slerp(store_key(run), iteration)
    with tempfile.TemporaryDirectory(prefix="kwarp-export-") as tmp:
        folder = Path(tmp) / "policy"
        folder.mkdir()
        interpolate_checkpoints(store.open_checkpoint(base_key), store.open_checkpoint(slerp_key),
                                [Output(folder, choice.eta)], threads=threads)  # fmt: skip
        measured = evaluate_checkpoint(run, folder, device=device)
        say(f"kwarp export: measured {describe(measured)}")
        record = {
            "run": name,
            "iteration": iteration,
            "store": store.describe(),
            "location": location,
            "request": {"kl_budget": kl_budget} if kl_budget is not None else {"eta": eta},
            "rule": choice.rule,
            "eta": choice.eta,
            "between": list(choice.between),
            "predicted": predicted,
            "measured": {k: v for k, v in measured.items() if k != "per_prompt"},
            "within_budget": within(measured, kl_budget),
            "front": table(points_of(evaluation)),
            "evaluation": {k: evaluation.get(k) for k in ("prompts", "samples", "temperature", "max_new_tokens", "seed")},
            "source": {"sft": f"{store.url.rstrip('/')}/{base_key}", "slerp": f"{store.url.rstrip('/')}/{slerp_key}"},
            "created": time.time(),
        }
        record["seconds"] = round(time.perf_counter() - started, 3)
        (folder / CARD).write_text(model_card(record))
        (folder / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        write_manifest(folder, {"kind": "export", "run": name, "iteration": iteration, "eta": choice.eta})
        if out is None:
            store.put_checkpoint(folder, layout.export(store_key(run)), fence=fence)
        else:
            # Outside the run's store no pointer records a generation: the lease is checked just before.
            store.check_fence(fence, f"publishing {out}")
            publish(folder, out, run)
    say(f"kwarp export: wrote {location}")
    return record


def within(measured: dict[str, Any], kl_budget: float | None) -> bool | None:
    """Whether the measured KL keeps the budget, allowing one standard error of the estimate."""
    if kl_budget is None:
        return None
    return bool(measured["kl"] <= kl_budget + (measured.get("kl_stderr") or 0.0))


def publish(folder: Path, out: str, run: WarpRun) -> None:
    """A local folder is replaced atomically (as `kwarp merge --out` does); an s3:// location is a checkpoint
    published at its key, with the run's S3 settings (endpoint, TLS, region; credentials from the environment)."""
    from kwarp.core.checkpoints import staging

    if out.startswith("s3://"):
        root, _, key = out.rstrip("/").rpartition("/")
        if not key or root == "s3:/":
            raise UserError(f"--out {out}: give s3://bucket/key (a key under the bucket)")
        storage = run.spec.storage if run.spec.storage.is_s3 else None
        open_store(root, storage).put_checkpoint(folder, key)
        return
    if "://" in out and not out.startswith("file://"):
        raise UserError(f"--out {out}: give a folder or an s3://bucket/key")
    dest = Path(out.removeprefix("file://"))
    with staging(dest) as tmp:
        for item in folder.iterdir():
            item.rename(tmp / item.name)


def run_task(run: WarpRun, *, device: str | None = None, threads: int = 1) -> dict[str, Any] | None:
    """The export task of a WarpRun with spec.export; None when <run>/export.json already exists."""
    export = run.spec.export
    if export is None:
        raise UserError(f"run '{run.name}' has no spec.export; add one, or export by hand: "
                        "kwarp export RUN_OR_FILE --kl-budget K --out DEST")  # fmt: skip
    store = open_store(run.spec.storage.url, run.spec.storage)
    key = layout.export_json(store_key(run))
    if store.exists(key):
        print(f"kwarp export: {store.describe()}/{key} exists; nothing to do")
        return None
    fence = claim_task(store, store_key(run), Task.export().id)  # an older attempt publishes nothing more
    record = export_policy(run, export.to, kl_budget=export.kl_budget, eta=export.eta, device=device, threads=threads,
                           fence=fence)  # fmt: skip
    store.put_json(key, record, fence=fence)  # last: its existence marks the task done
    return record


# ------------------------------------------------------------------ command line


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "modes:\n"
        "  tool: kwarp export RUN_OR_FILE --kl-budget K | --eta E --out DIR|s3://bucket/key\n"
        "  task: kwarp export [--spec FILE]   (the WarpRun's spec.export)\n"
    )
    parser.add_argument("run", metavar="RUN_OR_FILE", nargs="?",
                        help="a WarpRun document, or a run in its store: <root>/<run> (folder or s3:// URL)")
    parser.add_argument("--spec", help="task mode: the WarpRun document (default: $KWARP_SPEC)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--kl-budget", type=float, help="the most reward whose KL to θ_sft is at most this")
    which.add_argument("--eta", type=float, help="this η on the final front instead")
    parser.add_argument("--out", help="where to write the policy: a folder or s3://bucket/key")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="of the confirming evaluation (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is a folder that exists")
    parser.add_argument("--threads", type=int, default=1, help="worker threads of the LiTI arithmetic")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tool_flags = [f"--{f.replace('_', '-')}" for f in ("kl_budget", "eta", "out") if getattr(args, f) is not None]
    if args.run is None:
        if tool_flags:
            raise UserError(f"{', '.join(tool_flags)} need a run: kwarp export RUN_OR_FILE --kl-budget K --out DEST")
        from kwarp.core.spec import from_cli

        run_task(from_cli(args.spec), device=args.device, threads=args.threads)
        return 0
    if args.spec is not None:
        raise UserError("--spec is the task mode's; in tool mode the run is RUN_OR_FILE")
    if args.kl_budget is None and args.eta is None or args.out is None:
        raise UserError("give --kl-budget K or --eta E, and --out DIR|s3://bucket/key")
    run = resolve_run(args.run)
    dest = Path(args.out.removeprefix("file://"))
    if "://" not in args.out.removeprefix("file://") and dest.exists() and any(dest.iterdir()) and not args.overwrite:
        raise UserError(f"{args.out} exists and is not empty; pass --overwrite to replace it")
    export_policy(run, args.out, kl_budget=args.kl_budget, eta=args.eta, device=args.device, threads=args.threads)
    return 0
