"""`kwarp torchrun ARGS...`: torchrun, with a fenced-out member's exit code passed on.

A member trained by several processes runs under torchrun (one process per GPU, and one torchrun per
node of a multi-node member). When a newer attempt of the member takes its lease, the main process of
the older attempt stops with exit 75 (kwarp.store.fencing.FENCED_EXIT_CODE), which both executors read as
"not a failure: a newer attempt runs". torchrun does not pass a worker's exit code on: it kills the
other workers and exits 1, which the Job's podFailurePolicy and the gang's bookkeeping count as a failed
try (backoffLimit, maxRetries), so a member that did nothing wrong could fail its run. On another node of
a multi-node member no worker even saw the lease: its workers die of the broken collective (exit 1).

So the pod's main process is this launcher. It runs torchrun in this process (torch.distributed.run, the
module the `torchrun` script runs: the agent gets the pod's signals as before) and gives every worker a
per-pod folder in $KWARP_ATTEMPT_DIR. Each node's first trainer writes there which attempt its node
works for (the Fence the main process claimed, shared with every process by one broadcast:
`note_attempt`). When torchrun fails, the launcher exits 75 if a worker exited 75, or if the attempt it
worked for no longer holds the lease (one read of the lease: `kwarp.store.fencing.check`); otherwise it
fails as torchrun does (exit 1, with torchrun's summary of the failed workers).

    kwarp torchrun --standalone --nproc-per-node 2 --module kwarp train --iteration 0 --member 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kwarp.store.fencing import FENCED_EXIT_CODE, Fence

# The per-pod folder through which the trainers tell their launcher which attempt they work for.
ATTEMPT_DIR_ENV = "KWARP_ATTEMPT_DIR"
ATTEMPT_FILE = "attempt.json"


# Every argument is torchrun's (--help included, which prints torchrun's): the parser has no options itself.
PARSER_OPTIONS: dict[str, Any] = {"prefix_chars": "+", "add_help": False}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="torchrun's arguments, e.g. --standalone --nproc-per-node 2 --module kwarp train --iteration 0")  # fmt: skip
    parser.set_defaults(func=main)


# ------------------------------------------------------------------------------------------ the trainers' side


def note_attempt(accelerator: Any, fence: Fence | None, storage: dict[str, Any]) -> None:
    """Share the main process's fence with every process (one broadcast when there are several) and, under
    `kwarp torchrun`, write it for this node's launcher (the node's first process). `storage` is the run's
    spec.storage (JSON), so the launcher can read the lease. Every process calls it, right after the claim."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [fence]
        broadcast_object_list(box, from_process=0)
        fence = box[0]
    folder = os.environ.get(ATTEMPT_DIR_ENV)
    if not folder or fence is None or not accelerator.is_local_main_process:
        return
    target = Path(folder) / ATTEMPT_FILE
    staged = target.with_suffix(".tmp")
    staged.write_text(json.dumps({"fence": asdict(fence), "storage": storage}))
    staged.replace(target)  # whole or absent for the launcher


# ------------------------------------------------------------------------------------------ the launcher's side


def read_attempt(folder: Path) -> tuple[Fence, dict[str, Any]] | None:
    """The attempt this node's trainers worked for, if they got as far as its claim."""
    try:
        doc = json.loads((folder / ATTEMPT_FILE).read_text())
        return Fence(**doc["fence"]), doc["storage"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fenced_reason(exit_codes: dict[int, int], folder: Path) -> str | None:
    """Why a failed torchrun was fenced out (a newer attempt holds the lease), or None if it was not: a worker
    exited 75 (the main process was refused a write), or the lease no longer names this attempt (this node's
    workers died of the main process's exit, or of anything else after the takeover)."""
    fenced = sorted(rank for rank, code in exit_codes.items() if code == FENCED_EXIT_CODE)
    if fenced:
        return f"worker rank {', '.join(map(str, fenced))} exited {FENCED_EXIT_CODE} (fenced out)"
    attempt = read_attempt(folder)
    if attempt is None:
        return None
    from kwarp.core.spec import StorageSpec
    from kwarp.store import open_store
    from kwarp.store.base import FencedOut, StoreError
    from kwarp.store.fencing import check

    fence, storage = attempt
    spec = StorageSpec.model_validate(storage)
    try:
        check(open_store(spec.url, spec), fence, "torchrun's workers failed")
    except FencedOut as err:
        return str(err)
    except StoreError as err:  # cannot tell: count it as the failure it looks like
        print(f"kwarp torchrun: cannot read the lease {fence.lease}: {err}", file=sys.stderr, flush=True)
    return None


def main(args: argparse.Namespace) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    torchrun_args = parse_args(list(args.args))
    folder = Path(tempfile.mkdtemp(prefix="kwarp-attempt-"))  # $TMPDIR: the pod's scratch volume
    os.environ[ATTEMPT_DIR_ENV] = str(folder)  # the workers inherit the agent's environment
    try:
        run(torchrun_args)
        return 0
    except ChildFailedError as err:
        codes = {rank: failure.exitcode for rank, failure in err.failures.items()}
        reason = fenced_reason(codes, folder)
        if reason is None:
            print(err.format_msg(), file=sys.stderr, flush=True)  # what torchrun itself prints, then exits 1
            return 1
        # Not this member's failure: a newer attempt of it holds the lease; neither executor counts exit 75.
        print(f"kwarp torchrun: fenced out: {reason}", file=sys.stderr, flush=True)
        return FENCED_EXIT_CODE
    finally:
        shutil.rmtree(folder, ignore_errors=True)
