"""The layer rule (conventions.md 1), enforced by import-linter's contracts in pyproject.toml.

import-linter finds modules by walking the installed package's folder. In an editable install the
components live outside kwarp/ (setuptools maps them in), so the test checks a real build: it
installs the project into a temporary folder without dependencies and lints that.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-P", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert (target / "kwarp" / "operator" / "__init__.py").is_file()
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [str(lint_imports), str(ROOT / "pyproject.toml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_operator_folder_does_not_shadow_stdlib() -> None:
    """`operator/` is mapped to kwarp.operator; `import operator` must stay the standard library's.

    Run from the repository root with -P (as the Makefile, the runner and the tests do): without it,
    `python -m`/`-c` put the current folder first on sys.path, where operator/ would shadow the stdlib.
    """
    out = subprocess.run(
        [sys.executable, "-P", "-c", "import operator, kwarp.operator as k; print(hasattr(operator, 'itemgetter'), k.__name__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["True", "kwarp.operator"]
