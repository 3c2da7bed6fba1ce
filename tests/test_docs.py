"""What a new user reads is true: the docs and examples are held to the repository and the real CLI.

- every repository path README.md, docs/ and examples/ name (in backticks or as a link) exists;
- every `kwarp …` command line they show parses with kwarp's own argument parsers;
- every example WarpRun validates;
- examples/warprun.yaml shows every field of the WarpRun spec (compared with the pydantic model), and
  the example WarpRuns together show every field, alternatives included.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from kwarp.cli import COMMANDS, build_parser
from kwarp.core.spec import WarpRunSpec, load

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/*.yaml")])
EXAMPLE_RUNS = sorted(p for p in ROOT.glob("examples/*.yaml") if "kind: WarpRun" in p.read_text())
# Top-level entries of the repository a path in the docs may start with.
TOP = ("kwarp/", "operator/", "trainer/", "merger/", "charts/", "tests/", "docs/", "examples/", "benchmarks/",
       "scripts/", "requirements/", ".ci/", ".github/")  # fmt: skip
TOP_FILES = ("Dockerfile", "Makefile", "pyproject.toml", "README.md", ".dockerignore")
# Fields that exclude each other: examples/warprun.yaml shows one, another example the other.
ALTERNATIVES = {
    "spec.reward.callable": "spec.reward.location",
    "spec.evaluation.goldReward.callable": "spec.evaluation.goldReward.location",
    "spec.export.eta": "spec.export.klBudget",
}


def generic(path: str) -> str:
    """The three roles of spec.resources share one model: a field shown for any role counts for all."""
    return re.sub(r"^spec\.resources\.(trainer|merger|evaluation)\b", "spec.resources.<role>", path)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------ paths


def named_paths(text: str) -> Iterator[str]:
    """Repository paths a text names: `inline code` and (link targets) starting at a top-level entry."""
    candidates = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    for raw in candidates:
        for word in raw.split():
            word = word.strip("'\",;:()").split("#", 1)[0].split("::", 1)[0]
            if word.startswith(TOP) or word in TOP_FILES:
                if any(c in word for c in "<>*{}$…") or "..." in word:
                    continue  # a pattern (tests/test_*.py, <run>/...), not one path
                yield word.rstrip(".")


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_repository_path_a_doc_names_exists(doc: Path) -> None:
    text = doc.read_text()
    if doc.suffix == ".yaml":  # comments of an example
        text = "\n".join(re.findall(r"#(.*)", text))
    missing = sorted({p for p in named_paths(text) if not (ROOT / p).exists()})
    assert not missing, f"{rel(doc)} names paths that do not exist: {missing}"


# ------------------------------------------------------------------ command lines


def command_lines(text: str) -> Iterator[str]:
    """`kwarp …` command lines: in fenced code blocks (one per line) and in inline code spans."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            if line.startswith("kwarp ") or line == "kwarp":
                yield line
    for span in re.findall(r"`(kwarp [^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        yield span.strip()


def _argv(line: str) -> list[str]:
    """The words of a documented command line. Usage notation is read as the command it stands for:
    `[--store URL]` as `--store URL`, and an upper-case metavar after an option (`--iteration I`) as 1."""
    words = shlex.split(line.replace("…", "x").replace("[", " ").replace("]", " "))
    return ["1" if re.fullmatch(r"[A-Z][A-Z_]*", w) and i and words[i - 1].startswith("--") else w
            for i, w in enumerate(words)]  # fmt: skip


def _parse(line: str) -> str | None:
    """None when `line` parses with kwarp's CLI, else why not."""
    words = _argv(line)
    if len(words) < 2 or words[1].startswith("-"):
        return None  # `kwarp`, `kwarp --help`, `kwarp --version`
    name, rest = words[1], words[2:]
    if re.fullmatch(r"<[\w-]+>|[A-Z_]+", name):
        return None  # a placeholder for any subcommand: `kwarp <task>`
    if name not in COMMANDS:
        return f"`kwarp {name}` is not a command (commands: {', '.join(COMMANDS)})"
    parser = build_parser(name)
    try:
        parser.parse_args(rest)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return None
        if all(re.fullmatch(r"[a-z][a-z-]*", w) for w in rest):
            return None  # a reference to a (sub)command by name, `kwarp store cp`: not a command line
        return f"`{line}` does not parse"
    return None


@pytest.mark.parametrize("doc", [d for d in DOCS if d.suffix == ".md"], ids=rel)
def test_every_kwarp_command_line_parses(doc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems = [p for line in command_lines(doc.read_text()) if (p := _parse(line))]
    capsys.readouterr()  # argparse's usage messages
    assert not problems, f"{rel(doc)}:\n" + "\n".join(problems)


# ------------------------------------------------------------------ example WarpRuns


@pytest.mark.parametrize("path", EXAMPLE_RUNS, ids=rel)
def test_example_warprun_validates(path: Path) -> None:
    load(path)


def model_fields(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """camelCase paths of every field of a spec model, nested models included."""
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        yield path
        for arg in (info.annotation, *get_args(info.annotation)):
            inner = get_args(arg)[0] if get_origin(arg) is list and get_args(arg) else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from model_fields(inner, path)
                break


def map_fields(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Paths of the fields that hold free-form maps (nodeSelector): their keys are data, not fields."""
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        for arg in (info.annotation, *get_args(info.annotation)):
            if get_origin(arg) is dict:
                yield generic(path)
            inner = get_args(arg)[0] if get_origin(arg) is list and get_args(arg) else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from map_fields(inner, path)
                break


MAPS = set(map_fields(WarpRunSpec, "spec"))


def document_fields(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict) and generic(prefix) not in MAPS:
        for key, child in value.items():
            path = f"{prefix}.{key}"
            yield path
            yield from document_fields(child, path)
    elif isinstance(value, list):
        for item in value:
            yield from document_fields(item, prefix)


def spec_fields() -> set[str]:
    return {generic(f) for f in model_fields(WarpRunSpec, "spec")}


def shown_fields(path: Path) -> set[str]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "WarpRun"]
    return {generic(f) for f in document_fields(doc["spec"], "spec")}


def test_the_full_example_shows_every_field_of_the_spec() -> None:
    fields = spec_fields()
    shown = shown_fields(ROOT / "examples" / "warprun.yaml")
    missing = sorted(fields - shown - set(ALTERNATIVES))
    assert not missing, f"examples/warprun.yaml does not show {missing}: add each, with a comment saying what it does"
    unknown = sorted(shown - fields)
    assert not unknown, f"examples/warprun.yaml shows fields the spec does not have: {unknown}"


def test_the_examples_together_show_every_alternative() -> None:
    shown = set().union(*(shown_fields(p) for p in EXAMPLE_RUNS))
    missing = sorted(spec_fields() - shown)
    assert not missing, f"no example WarpRun shows {missing}"
