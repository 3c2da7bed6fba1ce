"""A merge process's start-up: what `kwarp merge` imports, and how it imports torch (kwarp.merger.startup).

Each check runs in a fresh interpreter (this test session has imported torch and much else already) and
reads that process's sys.modules and garbage-collector state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kwarp.core.checkpoints import verify

from .merger_refs import gpt2_fixture, gpt2_members_fixture  # noqa: F401 - the fixtures gpt2 and gpt2_members

ROOT = Path(__file__).resolve().parents[1]
# Packages a merger never needs: the model classes (the merge reads safetensors itself), the operator's.
FOREIGN = ("transformers", "kubernetes", "kopf", "accelerate")
PROBE = """
import gc, json, os, sys
def state(**extra):
    print(json.dumps({"modules": sorted(m for m in sys.argv[1].split(",") + ["torch"] if m in sys.modules),
                      "frozen": gc.get_freeze_count(), "gc_enabled": gc.isenabled(),
                      "openblas": os.environ.get("OPENBLAS_NUM_THREADS"), **extra}))
"""


def _probe(code: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-P", "-c", PROBE + code, ",".join(FOREIGN)], cwd=ROOT, env={**base, **(env or {})},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_merge_command_parses_its_arguments_without_torch() -> None:
    got = _probe("from kwarp.cli import build_parser\nbuild_parser('merge')\nimport kwarp.merger.cli\nstate()")
    assert got["modules"] == []
    assert got["frozen"] == 0


def test_a_folder_merge_imports_torch_once_frozen_and_no_foreign_package(
    gpt2: Path, gpt2_members: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["merge", "--init", str(gpt2), "--member", str(gpt2_members[0]), "--member", str(gpt2_members[1]),
            "--out", str(out)]
    got = _probe(f"from kwarp.cli import main\ncode = main({argv!r})\nstate(code=code)")
    assert got["code"] == 0
    verify(out)
    assert got["modules"] == ["torch"]
    # torch's objects were frozen after the import, and the collector runs for everything created since.
    assert got["frozen"] > 10_000 and got["gc_enabled"]
    assert got["openblas"] == "1"


def test_import_engine_collects_earlier_garbage_and_keeps_the_callers_settings() -> None:
    # The collector is off here so that nothing but import_engine collects the cycle (garbage only the
    # collector frees); it stays off, as the caller left it, and an explicit thread setting is kept.
    got = _probe(
        "import weakref\n"
        "gc.disable()\n"
        "class Node: pass\n"
        "a = Node(); a.self = a; ref = weakref.ref(a); del a\n"
        "from kwarp.merger.startup import import_engine\n"
        "torch = import_engine()\n"
        "state(garbage_freed=ref() is None, same=import_engine() is torch, engine='kwarp.merger.streaming' in sys.modules)",
        env={"OPENBLAS_NUM_THREADS": "3"},
    )
    assert got["garbage_freed"] and got["same"] and got["engine"]
    assert got["openblas"] == "3"
    assert got["frozen"] > 10_000 and not got["gc_enabled"]


def test_a_process_that_imported_torch_before_is_left_as_it_is() -> None:
    got = _probe("import torch\nfrom kwarp.merger.startup import ENGINE, import_engine\n"
                 "state(same=import_engine() is torch, engine=ENGINE in sys.modules)")
    assert got["same"] and got["engine"]
    assert got["frozen"] == 0 and got["gc_enabled"]
    assert got["openblas"] is None
