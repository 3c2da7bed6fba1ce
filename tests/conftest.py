from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo task built small, once per session (see tests/tinytask.py)."""
    from tests.tinytask import build_tiny

    return build_tiny(tmp_path_factory.getbasetemp() / "tiny-task")
