"""Fixtures and references shared by the merger's tests (tests/test_merger.py, tests/test_merger_cli.py):
tiny GPT-2 and Llama checkpoints with perturbed members, a merge into a folder, and the formulas of
docs/method.md computed in float64, independently of the merger's streaming code."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from kwarp.core.checkpoints import write_manifest
from kwarp.merger.report import MergeReport
from kwarp.merger.streaming import Output, merge_checkpoints

from .models import perturbed, tiny_gpt2, tiny_llama

State = dict[str, torch.Tensor]


@pytest.fixture(scope="module", name="gpt2")
def gpt2_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "init", seed=0)


@pytest.fixture(scope="module", name="llama")
def llama_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama") / "init", seed=0)


@pytest.fixture(scope="module", name="gpt2_members")
def gpt2_members_fixture(gpt2: Path) -> list[Path]:
    return [perturbed(gpt2, gpt2.parent / f"member-{k}", seed=k + 1) for k in range(3)]


@pytest.fixture(scope="module", name="llama_members")
def llama_members_fixture(llama: Path) -> list[Path]:
    return [perturbed(llama, llama.parent / f"member-{k}", seed=k + 1) for k in range(3)]


def merge(tmp_path: Path, init: Path, members: list[Path], eta: float = 1.0, **kw: object) -> tuple[Path, MergeReport]:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    report = merge_checkpoints(init, members, [Output(out, eta)], **kw)  # type: ignore[arg-type]
    write_manifest(out)
    return out, report


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same_bits(a: State, b: State) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(bits(a[name]), bits(b[name])), name


def expected_groups(names: list[str]) -> dict[str, list[str]]:
    """Layer groups written out for the two tiny architectures: blocks by index, the rest alone."""
    groups: dict[str, list[str]] = {}
    for name in names:
        m = re.match(r"^(transformer\.h\.\d+|model\.layers\.\d+)\.", name)
        groups.setdefault(m.group(1) if m else name, []).append(name)
    return groups


def flat(state: State, names: list[str]) -> torch.Tensor:
    return torch.cat([state[n].double().reshape(-1) for n in names])


def direct_slerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    omega = torch.arccos(torch.clamp(a @ b / (a.norm() * b.norm()), -1.0, 1.0))
    return (torch.sin((1 - lam) * omega) * a + torch.sin(lam * omega) * b) / torch.sin(omega)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))))


def pair_rotation(name: str, t: torch.Tensor, scale: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two task vectors of equal norm and exactly orthogonal: δ₂ rotates each pair (x, y) of δ₁ to (−y, x)."""
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    d1 = scale * torch.randn(t.numel(), generator=gen, dtype=torch.float64)
    assert t.numel() % 2 == 0, name
    pairs = d1.view(-1, 2)
    d2 = torch.stack([-pairs[:, 1], pairs[:, 0]], dim=1).reshape(-1)
    return d1.view(t.shape), d2.view(t.shape)

