from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kwarp.core.crd import crd

from .kube import Cluster, RunningOperator, StatusJobRunner
from .operator_harness import Api, options


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo task built small, once per session (see tests/tinytask.py)."""
    from tests.tinytask import build_tiny

    return build_tiny(tmp_path_factory.getbasetemp() / "tiny-task")


# ------------------------------------------------------------------ the operator tests (tests/operator_harness.py)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, crds=[crd()]) as c:
        yield c


@pytest.fixture
def api(cluster: Cluster) -> Api:
    return Api(cluster)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def runner(cluster: Cluster) -> Iterator[StatusJobRunner]:
    with StatusJobRunner(cluster) as r:
        yield r
    assert not r.errors, r.errors


@pytest.fixture
def operator(cluster: Cluster) -> Iterator[RunningOperator]:
    with RunningOperator(cluster, options()) as op:
        yield op
