"""`kwarp train --iteration I --member M`: the task command of one WARP member.

Without --member, the member is $KWARP_MEMBER: a queued run trains an iteration's members as one Indexed
Job, whose pod index (set there by the Job's fieldRef) is the member (kwarp.operator.jobs.gang_manifest).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from kwarp.core.spec import MEMBER_ENV


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iteration", type=int, required=True, help="0-based iteration")
    parser.add_argument("--member", type=int,
                        help=f"0-based member (policy) of the iteration (default: ${MEMBER_ENV}, an Indexed Job's pod index)")
    parser.add_argument("--spec", help="WarpRun file (default: the document in $KWARP_SPEC)")
    parser.add_argument("--steps", type=int, help="override T, the number of steps (tests, smoke runs)")
    parser.add_argument("--eval-every", type=int, help="evaluate reward and KL to θ_sft every N steps (default: spec.evaluation.every)")
    parser.add_argument("--eval-prompts", type=int, help="evaluation prompts used by --eval-every (default: spec.evaluation.trajectoryPrompts)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.set_defaults(func=main)


def member_of(flag: int | None, env: Mapping[str, str]) -> int:
    """The member to train: --member, else $KWARP_MEMBER (a gang pod's completion index)."""
    from kwarp.core.errors import UserError

    if flag is not None:
        return flag
    value = env.get(MEMBER_ENV, "")
    if not value.strip().isdigit():
        raise UserError(f"--member is missing and ${MEMBER_ENV} is {value!r}: give --member M (0-based)")
    return int(value)


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from kwarp.core.errors import UserError
    from kwarp.core.spec import from_cli

    from .signals import EXIT_CODE, Terminated
    from .train import train

    run = from_cli(args.spec)
    args.member = member_of(args.member, os.environ)
    if not 0 <= args.iteration < run.spec.warp.iterations:
        raise UserError(f"--iteration {args.iteration} is outside 0..{run.spec.warp.iterations - 1}")
    if not 0 <= args.member < run.spec.warp.policies:
        raise UserError(f"--member {args.member} is outside 0..{run.spec.warp.policies - 1}")
    for flag, value in (("--steps", args.steps), ("--eval-every", args.eval_every), ("--eval-prompts", args.eval_prompts)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    hf_logging.disable_progress_bar()
    try:
        train(
            run,
            args.iteration,
            args.member,
            steps=args.steps,
            device=args.device,
            # The spec's evaluation.every makes trajectories part of every run (the report plots them).
            eval_every=args.eval_every or run.spec.evaluation.every or None,
            eval_prompts=args.eval_prompts or run.spec.evaluation.trajectory_prompts,
        )
    except Terminated as stopped:
        # Not an error: the pod is going away (eviction, preemption, deletion) and the work is saved.
        print(f"kwarp train: {stopped}", file=sys.stderr, flush=True)
        return EXIT_CODE
    return 0
