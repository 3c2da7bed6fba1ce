"""The locks in requirements/: what `make demo`, `make test` and both images install.

pyproject.toml keeps ranges (kwarp is a library others install beside their own pins); the locks,
resolved from those ranges by `make lock`, pin every package with its dependencies. These tests hold
the locks to pyproject.toml, to each other, to this test environment and to the install commands,
and prove in a fresh virtual environment that the operator installs and runs without torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Which extras of kwarp each lock is resolved for (the Makefile's `lock` target).
LOCK_EXTRAS = {"dev.txt": {"all", "test"}, "worker.txt": {"worker"}, "operator.txt": {"operator"}}
# The machine-learning stack the operator image must not carry.
ML_STACK = {"torch", "transformers", "accelerate", "safetensors", "tokenizers", "numpy", "matplotlib", "triton"}
# The environment of this repository's images and CI: Linux, x86_64, CPython 3.11.
LINUX_311 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
             "python_version": "3.11", "python_full_version": "3.11.13", "implementation_name": "cpython"}  # fmt: skip


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None

    def applies(self, env: dict[str, str] | None = None) -> bool:
        return self.marker is None or self.marker.evaluate(env or {})


def read_lock(name: str) -> list[Pin]:
    pins = []
    for line in (LOCKS / name).read_text().splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: {line} is not pinned with =="
        pins.append(Pin(canonicalize_name(req.name), spec.version, req.marker))
    assert pins, f"{name} is empty"
    return pins


def locked(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """{package: version} of a lock for one environment (the markers evaluated)."""
    return {p.name: p.version for p in read_lock(name) if p.applies(env)}


def kwarp_requirements(extras: set[str]) -> Iterator[Requirement]:
    """kwarp's own requirements for some extras, self-references (kwarp[all]) expanded."""
    project = PYPROJECT["project"]
    yield from (Requirement(r) for r in project["dependencies"])
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in project["optional-dependencies"][extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "kwarp":
                todo.extend(req.extras)
            else:
                yield req


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_lock_satisfies_pyproject_ranges(lock: str) -> None:
    pins = locked(lock, LINUX_311)
    for req in kwarp_requirements(LOCK_EXTRAS[lock]):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} does not pin {name} (pyproject: {req}); run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{lock}: {name}=={pins[name]} is outside pyproject's range '{req.specifier}'; run `make lock`"
        )


@pytest.mark.parametrize("lock", ["worker.txt", "operator.txt"])
def test_image_locks_agree_with_the_lock_the_tests_run(lock: str) -> None:
    """A package has one version everywhere: the images run what `make test` ran."""
    dev = {(p.name, str(p.marker)): p.version for p in read_lock("dev.txt")}
    dev_any = {p.name for p in read_lock("dev.txt")}
    for pin in read_lock(lock):
        assert pin.name in dev_any, f"{lock} pins {pin.name}, which the test environment never installs"
        key = (pin.name, str(pin.marker))
        if key in dev:
            assert dev[key] == pin.version, f"{pin.name}: {lock} {pin.version}, dev.txt {dev[key]}"
    for name, version in locked(lock, LINUX_311).items():
        assert locked("dev.txt", LINUX_311)[name] == version, f"{name}: {lock} {version} on Linux/3.11"


def test_operator_lock_has_no_machine_learning_stack() -> None:
    names = {p.name for p in read_lock("operator.txt")}
    assert not names & ML_STACK, f"the operator image would carry {sorted(names & ML_STACK)}"
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))]


def test_worker_lock_pins_torch_and_its_cuda_runtime() -> None:
    pins = locked("worker.txt", LINUX_311)
    torch_in = re.search(r"^torch==(\S+)$", (LOCKS / "torch.in").read_text(), re.M)
    assert torch_in and pins["torch"] == torch_in.group(1)
    assert any(n.startswith("nvidia-") for n in pins), "a CUDA build of torch needs its runtime wheels pinned"


def test_this_environment_runs_the_locked_versions() -> None:
    """`make test` installs through dev.txt: every locked package present here has the locked version
    (torch's local build label, +cpu or +cu130, aside)."""
    env = {"sys_platform": sys.platform, "platform_machine": os.uname().machine,
           "python_full_version": ".".join(map(str, sys.version_info[:3])), "implementation_name": "cpython"}  # fmt: skip
    wrong = []
    for name, version in locked("dev.txt", env).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform package (or not installed by pip here)
        if Version(installed).public != Version(version).public:
            wrong.append(f"{name}: installed {installed}, locked {version}")
    assert not wrong, "the test environment drifted from requirements/dev.txt:\n" + "\n".join(wrong)


# ------------------------------------------------------------------ nothing is installed unpinned

PIP_INSTALL = re.compile(r"pip install\b(?P<args>[^&;\n]*)")


def _unpinned(args: str) -> list[str]:
    """Package arguments of one `pip install` that are neither pinned with == nor covered by a lock."""
    words = args.replace("\\\n", " ").split()
    if "-r" in words or "-c" in words:
        return []  # the lock pins every package, and every dependency, of this install
    out = []
    for word in words:
        word = word.strip("\"'")
        if word.startswith(("-", "$", "/", ".")) or "==" in word or not word:
            continue
        out.append(word)
    return out


@pytest.mark.parametrize("path", ["Makefile", "Dockerfile"])
def test_no_unpinned_install(path: str) -> None:
    text = (ROOT / path).read_text()
    text = re.sub(r"\\\n", " ", text)
    installs = list(PIP_INSTALL.finditer(text))
    assert installs, f"no pip install found in {path}"
    for m in installs:
        line = m.group(0)
        # Make variables expand to pinned values: check what they hold.
        for var, value in re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.M):
            line = line.replace(f"$({var})", value)
        assert not _unpinned(line.removeprefix("pip install")), f"{path}: unpinned install: {m.group(0).strip()}"


def test_make_lock_resolves_every_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\nlock:") :]
    for name in ("dev.txt", "worker.txt", "operator.txt", "checkov.txt"):
        assert re.search(rf"-o (requirements/{name}|\$\(LOCK_\w+\))", target) and (LOCKS / name).is_file(), name
        assert (LOCKS / name).read_text().startswith("# This file was autogenerated by uv"), name


# ------------------------------------------------------------------ the operator without torch


@pytest.fixture(scope="module")
def operator_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding only kwarp with its operator extra, from the operator's lock."""
    venv = tmp_path_factory.mktemp("operator-venv") / "venv"
    subprocess.run([sys.executable, "-P", "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-P", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_FIND_LINKS")}
    for args in (["-r", str(LOCKS / "operator.txt")], ["--no-deps", str(ROOT)]):
        proc = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900, env=env, cwd=venv.parent)
        if proc.returncode != 0 and "Could not find a version" in proc.stderr + proc.stdout:
            pytest.skip(f"PyPI unreachable for the fresh operator environment: {proc.stderr[-300:]}")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return venv


OPERATOR_IMPORTS = """
import importlib, pkgutil, sys
import kwarp.operator
names = sorted(m.name for m in pkgutil.walk_packages(kwarp.operator.__path__, "kwarp.operator."))
for name in names:
    importlib.import_module(name)
from kwarp.cli import build_parser
for command in ("operator", "validate", "crd", "store"):
    build_parser(command)
assert importlib.util.find_spec("torch") is None, "torch is installed"
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "accelerate", "numpy"})
assert not heavy, heavy
print(len(names), "operator modules imported")
"""


def test_operator_runs_in_a_fresh_environment_without_torch(operator_venv: Path) -> None:
    python = str(operator_venv / "bin" / "python")
    proc = subprocess.run([python, "-P", "-c", OPERATOR_IMPORTS], capture_output=True, text=True, timeout=300,
                          cwd=operator_venv.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "operator modules imported" in proc.stdout
    kwarp = str(operator_venv / "bin" / "kwarp")
    for argv in (["operator", "--help"], ["crd"], ["validate", str(ROOT / "examples" / "warprun.yaml")]):
        proc = subprocess.run([kwarp, *argv], capture_output=True, text=True, timeout=120, cwd=operator_venv.parent)
        assert proc.returncode == 0, f"kwarp {' '.join(argv)}: {proc.stdout}{proc.stderr}"
    # A subcommand that needs another extra says which, without a traceback.
    for argv, extra in ((["report", "--help"], "worker"), (["dashboard"], "dashboard")):
        proc = subprocess.run([kwarp, *argv], capture_output=True, text=True, timeout=120, cwd=operator_venv.parent)
        assert proc.returncode == 2 and f"pip install 'kwarp[{extra}]'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    installed = {canonicalize_name(d.metadata["Name"]) for d in _distributions(operator_venv)}
    assert not installed & ML_STACK, sorted(installed & ML_STACK)
    assert {"kopf", "kubernetes", "kwarp"} <= installed


def _distributions(venv: Path) -> list[metadata.Distribution]:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return list(metadata.distributions(path=[str(site)]))
