"""`kwarp gang-node TASK...`: the entrypoint of one pod of a queued iteration's gang of multi-node members.

The gang Job (kwarp.operator.jobs.gang_manifest) has M x N pods; pod i is node i % N of member i // N
(kwarp.core.placement). The container's command cannot do that arithmetic, so this shim does it: it sets
KWARP_MEMBER (which `kwarp train` reads when --member is absent), PET_NODE_RANK and PET_MASTER_ADDR (the
member's rank-0 pod) from the pod's index, then replaces itself with `kwarp torchrun`, which reads the rest of its
settings (PET_NNODES, PET_NPROC_PER_NODE, PET_MASTER_PORT) from the Job's environment:

    kwarp gang-node train --iteration 1   ->   kwarp torchrun --module kwarp train --iteration 1

exec, not a child process: torchrun's agent (in that process) gets the pod's signals (a SIGTERM lets the trainers save their state).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from .errors import UserError
from .placement import pod_env


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", nargs=argparse.REMAINDER, help="the kwarp task to run under torchrun, e.g. train --iteration 1")
    parser.set_defaults(func=main)


def torchrun_argv(task: list[str]) -> list[str]:
    """`kwarp torchrun` (torchrun, with a fenced-out member's exit 75 passed on: kwarp.trainer.launch) of this
    interpreter: the image's, and under the tests' kubelet the test environment's, whatever PATH holds."""
    return [sys.executable, "-m", "kwarp", "torchrun", "--module", "kwarp", *task]


def launch(task: list[str], environ: Mapping[str, str]) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, one line saying where this pod stands) of the torchrun to exec."""
    if not task:
        raise UserError("give the task to run, e.g. `kwarp gang-node train --iteration 0`")
    added = pod_env(environ)
    line = (f"kwarp gang-node: node {added['PET_NODE_RANK']} of member {added['KWARP_MEMBER']} "
            f"({environ.get('PET_NNODES')} nodes), rendezvous at {added['PET_MASTER_ADDR']}:{environ.get('PET_MASTER_PORT', '')}")  # fmt: skip
    return torchrun_argv(task), {**environ, **added}, line


def main(args: argparse.Namespace) -> int:
    argv, env, line = launch(list(args.task), os.environ)
    print(line, file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)
    return 0  # not reached: exec replaced this process
