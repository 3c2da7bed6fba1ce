"""The operator's garbage-collector settings (operator/collector.py): `serve` applies them once started, the
production operator's options carry them by default, and the tests' operators leave the test process alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from kwarp.cli import build_parser
from kwarp.operator.app import OperatorOptions
from kwarp.operator.cli import options_from
from kwarp.operator.collector import CollectionPolicy

from .kube import Cluster, RunningOperator
from .operator_harness import options


@pytest.fixture
def restored() -> Iterator[None]:
    """The test process's collector as it was: thresholds, nothing frozen by the test."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    yield
    gc.set_threshold(*threshold)
    if gc.get_freeze_count() > frozen:
        gc.unfreeze()


def test_the_production_operator_defers_full_collections_and_freezes_its_start_up() -> None:
    assert OperatorOptions().collections == CollectionPolicy(threshold2=1000, freeze=True)
    assert options_from(build_parser("operator").parse_args([]), {}).collections == CollectionPolicy(threshold2=1000, freeze=True)


def test_serve_applies_its_collection_policy(cluster: Cluster, restored: None) -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert threshold[2] != 1234
    with RunningOperator(cluster, options(collections=CollectionPolicy(threshold2=1234, freeze=True))):
        assert gc.get_threshold() == (*threshold[:2], 1234)
        # the modules imported and the handlers built: out of every collection
        assert gc.get_freeze_count() >= frozen + 10_000


def test_without_a_policy_serve_leaves_the_collector_alone(cluster: Cluster, restored: None) -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    with RunningOperator(cluster, options()):  # the tests' options: collections=None
        assert gc.get_threshold() == threshold and gc.get_freeze_count() == frozen
