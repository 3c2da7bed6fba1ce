"""A gang pod's place (kwarp.core.placement) and the shim that applies it in the pod (kwarp gang-node)."""

from __future__ import annotations

import sys

import pytest

from kwarp.core.cli_gang import launch
from kwarp.core.errors import UserError
from kwarp.core.placement import member_indexes, node_env, place, pod_env, pod_index

HOSTS = "demo-i0-members-{index}.demo-i0-members"


@pytest.mark.parametrize(("index", "nodes", "member", "rank", "leader"), [
    (0, 1, 0, 0, 0), (3, 1, 3, 0, 3),  # one node per member: the index is the member
    (0, 2, 0, 0, 0), (1, 2, 0, 1, 0), (2, 2, 1, 0, 2), (3, 2, 1, 1, 2),  # M = 2, N = 2
    (11, 4, 2, 3, 8), (8, 4, 2, 0, 8),
])  # fmt: skip
def test_pod_index_to_member_and_node_rank(index: int, nodes: int, member: int, rank: int, leader: int) -> None:
    p = place(index, nodes)
    assert (p.member, p.node_rank, p.leader) == (member, rank, leader)
    assert pod_index(member, rank, nodes) == index


@pytest.mark.parametrize(("members", "nodes"), [(1, 1), (2, 2), (3, 4), (8, 8)])
def test_every_index_has_exactly_one_place_and_members_are_consecutive(members: int, nodes: int) -> None:
    places = [place(i, nodes) for i in range(members * nodes)]
    assert sorted((p.member, p.node_rank) for p in places) == [(m, r) for m in range(members) for r in range(nodes)]
    for m in range(members):
        assert [place(i, nodes).member for i in member_indexes(m, nodes)] == [m] * nodes
        assert member_indexes(m, nodes)[0] == place(member_indexes(m, nodes)[-1], nodes).leader


@pytest.mark.parametrize(("index", "nodes"), [(-1, 2), (0, 0)])
def test_out_of_range_is_refused(index: int, nodes: int) -> None:
    with pytest.raises(ValueError):
        place(index, nodes)
    with pytest.raises(ValueError):
        pod_index(0, 2, 2)


def test_each_member_meets_at_its_rank_zero_pod() -> None:
    """M = 2, N = 2: pods 0 and 1 rendezvous at pod 0, pods 2 and 3 at pod 2."""
    assert [node_env(i, 2, HOSTS) for i in range(4)] == [
        {"KWARP_MEMBER": "0", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "demo-i0-members-0.demo-i0-members"},
        {"KWARP_MEMBER": "0", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "demo-i0-members-0.demo-i0-members"},
        {"KWARP_MEMBER": "1", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "demo-i0-members-2.demo-i0-members"},
        {"KWARP_MEMBER": "1", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "demo-i0-members-2.demo-i0-members"},
    ]


def test_the_pod_reads_its_index_from_the_fieldref_or_the_job_controllers_variable() -> None:
    env = {"PET_NNODES": "2", "KWARP_GANG_HOSTS": HOSTS}
    assert pod_env({**env, "KWARP_POD_INDEX": "3"})["PET_NODE_RANK"] == "1"
    assert pod_env({**env, "JOB_COMPLETION_INDEX": "2"})["KWARP_MEMBER"] == "1"
    assert pod_env({**env, "KWARP_POD_INDEX": "1", "JOB_COMPLETION_INDEX": "2"})["KWARP_MEMBER"] == "0"
    for missing, name in [({"PET_NNODES": "2"}, "KWARP_POD_INDEX"), ({"KWARP_POD_INDEX": "x"}, "KWARP_POD_INDEX"),
                          ({"KWARP_POD_INDEX": "1", "KWARP_GANG_HOSTS": HOSTS}, "PET_NNODES"),
                          ({"KWARP_POD_INDEX": "1", "PET_NNODES": "2"}, "KWARP_GANG_HOSTS")]:  # fmt: skip
        with pytest.raises(UserError, match=name):
            pod_env(missing)


def test_gang_node_execs_torchrun_with_the_pods_place_added() -> None:
    environ = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_PORT": "29500", "KWARP_GANG_HOSTS": HOSTS,
               "KWARP_POD_INDEX": "3", "KWARP_SPEC": "{}"}  # fmt: skip
    argv, env, line = launch(["train", "--iteration", "0"], environ)
    assert argv == [sys.executable, "-m", "kwarp", "torchrun", "--module", "kwarp", "train", "--iteration", "0"]
    assert env == {**environ, "KWARP_MEMBER": "1", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "demo-i0-members-2.demo-i0-members"}
    assert line == "kwarp gang-node: node 1 of member 1 (2 nodes), rendezvous at demo-i0-members-2.demo-i0-members:29500"
    with pytest.raises(UserError, match="give the task"):
        launch([], environ)
    # torchrun's own parser takes what follows `-m kwarp torchrun` (kwarp.trainer.launch passes it all on).
    run = pytest.importorskip("torch.distributed.run")
    parsed = run.get_args_parser().parse_args(argv[4:])
    assert parsed.module and parsed.training_script == "kwarp" and parsed.training_script_args == ["train", "--iteration", "0"]
