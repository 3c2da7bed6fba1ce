"""`kwarp` command line: the one composition root that wires the components into subcommands.

Each subcommand lives in the module that owns it and exposes `register(parser)`, which adds its
arguments and sets `func` (returning an exit code). Modules are imported only for the subcommand
that runs, so `kwarp validate` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kwarp import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("kwarp.run.runner", "run a WarpRun end to end on this machine (embedded mode)"),
    "report": ("kwarp.run.report", "write the HTML report, figures and summary.json of a run"),
    "validate": ("kwarp.core.cli_spec", "check a WarpRun document and print the resolved spec"),
    "crd": ("kwarp.core.cli_spec", "print the WarpRun CustomResourceDefinition (generated from the spec)"),
    "plan-resources": ("kwarp.core.cli_memory", "bytes per GPU of a member's trainer, piece by piece, for ddp and fsdp"),
    "prepare": ("kwarp.run.prepare", "task: copy the SFT policy into the run's store (checks model, reward, data)"),
    "train": ("kwarp.trainer.cli", "task: train one WARP member (REINFORCE with the EMA anchor)"),
    "torchrun": ("kwarp.trainer.launch", "task entrypoint: torchrun, a fenced-out member's exit 75 passed on (not turned into 1)"),
    "gang-node": ("kwarp.core.cli_gang", "task entrypoint: one pod of a queued gang of multi-node members, then torchrun"),
    "merge": ("kwarp.merger.cli", "task or tool: SLERP the members' task vectors, then LiTI"),
    "eval": ("kwarp.run.evaluate", "task or tool: reward and KL along the LiTI path (the Pareto front)"),
    "export": ("kwarp.merger.export", "the deliverable: the policy on the final front within a KL budget, measured, with a model card"),
    "task": ("kwarp.tasks.cli", "the bundled demo task: build it, show where it is"),
    "store": ("kwarp.store.cli", "list, verify and copy checkpoints between file:// and s3:// stores"),
    "operator": ("kwarp.operator.cli", "run the Kubernetes operator (kopf)"),
    "dashboard": ("kwarp.observability.dashboard", "print the Grafana dashboard JSON"),
    "reproduce": ("kwarp.run.reproduce", "re-run the paper's four findings on the demo task"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kwarp",
        description="WARP alignment of language models, on Kubernetes or on one machine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<10} {h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("--version", action="version", version=f"kwarp {__version__}")
    parser.add_argument("command", nargs="?", help="one of the commands below")
    return parser


def build_parser(name: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    # A command that passes every argument on (`kwarp torchrun`: torchrun's options, --help included)
    # gives its parser options, e.g. no option prefix of its own.
    options = getattr(module, "PARSER_OPTIONS", {})
    parser = argparse.ArgumentParser(prog=f"kwarp {name}", description=help_text, **options)
    register = getattr(module, f"register_{name}", None) or module.register
    register(parser)
    return parser


# Third-party modules that come with an extra of kwarp: a subcommand that needs one says which to install.
EXTRAS: dict[str, str] = {
    **dict.fromkeys(("torch", "transformers", "accelerate", "safetensors", "tokenizers", "numpy", "matplotlib"), "worker"),
    **dict.fromkeys(("kopf", "kubernetes"), "operator"),
    "grafana_foundation_sdk": "dashboard",
}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The extra of kwarp that provides the missing module, if it is one of kwarp's optional dependencies."""
    return EXTRAS.get((err.name or "").split(".")[0])


def _user_errors() -> tuple[type[BaseException], ...]:
    from kwarp.core.checkpoints import CheckpointError
    from kwarp.core.errors import UserError
    from kwarp.core.spec import SpecError
    from kwarp.store.base import StoreError

    return (SpecError, CheckpointError, StoreError, UserError)


def _fenced_out() -> type[BaseException]:
    from kwarp.store.base import FencedOut

    return FencedOut


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        top = _top_parser()
        top.parse_args(argv)
        top.print_help()
        return 0 if not argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kwarp: unknown command '{name}'; run `kwarp --help` for the list", file=sys.stderr)
        return 2
    try:
        parser = build_parser(name)
        args = parser.parse_args(rest)
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:
        extra = missing_extra(err)
        if extra is None:
            raise
        print(f"kwarp {name}: needs {err.name}, which comes with kwarp's '{extra}' extra: "
              f"pip install 'kwarp[{extra}]' (or 'kwarp[all]')", file=sys.stderr)  # fmt: skip
        return 2
    except _fenced_out() as err:
        # Not this task's failure: a newer attempt of it runs (kwarp.store.fencing); its executor does not
        # count this exit against failurePolicy.maxRetries.
        from kwarp.store.fencing import FENCED_EXIT_CODE

        print(f"kwarp {name}: fenced out: {err}", file=sys.stderr)
        return FENCED_EXIT_CODE
    except _user_errors() as err:
        print(f"kwarp {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kwarp {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
