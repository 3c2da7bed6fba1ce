"""The docs keep up with the code: what a user needs of the code is named in README.md and docs/.

tests/test_docs.py checks that what the docs name exists (paths, command lines, the example WarpRuns); this
file checks the other direction, where a new piece of code would otherwise go undocumented:

- README's Layout names every top-level folder of the repository and every package and module of kwarp/;
- README names every target `make help` lists and every page of docs/;
- every option of the commands a user types (run, export, report, task build) is in README.md or docs/,
  and every option of `kwarp operator` is in docs/internals.md (its settings);
- docs/cluster.md's tables of conditions and Events list exactly the condition types the operator sets
  (operator/conditions.py) and the Event reasons it posts (operator/reconcile.py);
- docs/internals.md's storage layout shows every key kwarp/store/layout.py builds, and it names every module
  of the three components (trainer/, merger/, operator/).
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
from pathlib import Path
from typing import get_args

import pytest

from kwarp.cli import build_parser
from kwarp.core.plan import Phase
from kwarp.store import layout

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS_TEXT = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md"))])


def section(text: str, heading: str) -> str:
    """The body of the Markdown section `heading` (its line, e.g. '## Layout'), up to the next heading of its level
    or above."""
    level = len(heading) - len(heading.lstrip("#"))
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{level}}} |\Z)", text, re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


def first_column(table_text: str) -> set[str]:
    """The `code` words of the first cell of every row of the Markdown tables in a text (header rows included:
    theirs hold no code)."""
    words: set[str] = set()
    for line in table_text.splitlines():
        if line.startswith("|") and not re.match(r"\|\s*-", line):
            words |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return words


# ------------------------------------------------------------------ layout


def tracked_top_folders() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked folders are unknown")
    return {line.split("/", 1)[0] for line in out.splitlines() if "/" in line and not line.startswith(".")}


def test_the_layout_names_every_top_level_folder() -> None:
    layout = section(README, "## Layout")
    missing = sorted(d for d in tracked_top_folders() if not re.search(rf"^{re.escape(d)}/", layout, re.M))
    assert not missing, f"README.md's Layout does not name the folders {missing}"


def test_the_layout_names_every_package_and_module_of_kwarp() -> None:
    layout = section(README, "## Layout")
    entries = [f"{p.name}/" for p in (ROOT / "kwarp").iterdir() if (p / "__init__.py").exists()]
    entries += [p.name for p in (ROOT / "kwarp").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = sorted(e for e in entries if not re.search(rf"(?<![\w/.]){re.escape(e)}(?!\w)", layout))
    assert not missing, f"README.md's Layout does not name kwarp/'s {missing}"


# ------------------------------------------------------------------ make targets


def test_the_readme_names_every_target_make_help_lists() -> None:
    listed = re.findall(r'@echo "make ([\w-]+)', (ROOT / "Makefile").read_text())
    assert listed, "the Makefile's help lists no target"
    missing = [t for t in listed if f"make {t}" not in README]
    assert not missing, f"README.md does not name {[f'make {t}' for t in missing]}"


def test_the_readme_names_every_page_of_the_docs() -> None:
    missing = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").glob("*.md"))
               if p.relative_to(ROOT).as_posix() not in README]  # fmt: skip
    assert not missing, f"README.md does not lead to {missing}"


# ------------------------------------------------------------------ options


def options(parser: argparse.ArgumentParser) -> set[str]:
    """The long options of a parser and of its subcommands'."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= options(sub)
        found |= {o for o in action.option_strings if o.startswith("--") and o != "--help"}
    return found


@pytest.mark.parametrize("command", ["run", "export", "report", "task"])
def test_every_option_of_a_user_command_is_documented(command: str) -> None:
    parser = build_parser(command)
    if command == "task":  # its build: path and show are for looking around
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices["build"]
    missing = sorted(o for o in options(parser) if not re.search(rf"{re.escape(o)}(?![\w-])", DOCS_TEXT))
    assert not missing, f"`kwarp {command}` options named nowhere in README.md or docs/: {missing}"


def test_every_operator_setting_is_in_the_internals() -> None:
    internals = (ROOT / "docs" / "internals.md").read_text()
    missing = sorted(o for o in options(build_parser("operator"))
                     if not re.search(rf"{re.escape(o)}(?![\w-])", internals))  # fmt: skip
    assert not missing, f"docs/internals.md (Operator, Settings) does not name `kwarp operator` {missing}"


# ------------------------------------------------------------------ conditions and Events


def condition_types() -> set[str]:
    source = (ROOT / "operator" / "conditions.py").read_text()
    block = source.split("# Types", 1)[1].split("# Reasons", 1)[0]
    return set(re.findall(r'^[A-Z_]+ = "(\w+)"', block, re.M))


def event_reasons() -> set[str]:
    """Every reason the operator posts an Event with: literal ones, those of PROBLEM_EVENTS, the watchdog's, and
    each phase (a phase change posts the new phase)."""
    from kwarp.operator.reconcile import PROBLEM_EVENTS
    from kwarp.operator.watchdog import NO_PROGRESS

    # Every module of the operator: a pass (reconcile.py) and the deletion (deletion.py) post Events.
    source = "\n".join(p.read_text() for p in sorted((ROOT / "operator").glob("*.py")))
    literal = set(re.findall(r'\bevents\(\s*body,\s*"(?:Normal|Warning)",\s*"(\w+)"', source))
    return literal | {reason for _, reason in PROBLEM_EVENTS} | {NO_PROGRESS} | set(get_args(Phase))


def test_the_cluster_docs_list_every_condition() -> None:
    shown = first_column(section((ROOT / "docs" / "cluster.md").read_text(), "### Conditions"))
    code = condition_types()
    assert code, "no condition types found in operator/conditions.py"
    assert shown == code, (f"docs/cluster.md, Conditions: missing {sorted(code - shown)}, "
                           f"not conditions {sorted(shown - code)}")  # fmt: skip


def test_the_cluster_docs_list_every_event_reason() -> None:
    shown = first_column(section((ROOT / "docs" / "cluster.md").read_text(), "### Events"))
    code = event_reasons()
    assert shown == code, (
        f"docs/cluster.md, Events: missing {sorted(code - shown)}, not posted {sorted(shown - code)}"
    )


# ------------------------------------------------------------------ storage layout


def layout_keys() -> dict[str, str]:
    """Every key kwarp/store/layout.py builds, with its arguments as the docs write them (<run>, <i>, <m>, <task>)."""
    names = {"run": "<run>", "i": "<i>", "m": "<m>", "task_id": "<task>"}
    return {
        name: fn(*(names[p] for p in inspect.signature(fn).parameters)).rstrip("/")
        for name, fn in inspect.getmembers(layout, inspect.isfunction)
        if fn.__module__ == layout.__name__
    }


def test_the_internals_show_every_key_of_the_storage_layout() -> None:
    shown = section((ROOT / "docs" / "internals.md").read_text(), "## Storage layout")
    missing = sorted(f"{name}: {key}" for name, key in layout_keys().items() if key not in shown)
    assert not missing, f"docs/internals.md, Storage layout, does not show {missing}"


@pytest.mark.parametrize("component", ["trainer", "merger", "operator"])
def test_the_internals_name_every_module_of_a_component(component: str) -> None:
    internals = (ROOT / "docs" / "internals.md").read_text()
    modules = sorted(p.name for p in (ROOT / component).glob("*.py") if p.name != "__init__.py")
    missing = [m for m in modules if not re.search(rf"(?<![\w.]){re.escape(m)}", internals)]
    assert not missing, f"docs/internals.md (Packages and layers) does not name {component}/'s {missing}"
