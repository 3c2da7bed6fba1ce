"""Where a pod of a queued iteration's gang stands, and what torchrun must be told there. Pure.

A queued run trains an iteration's M members as ONE Indexed Job, so that Kueue admits them as one Workload
(kwarp.operator.jobs.gang_manifest). With N nodes per member that Job has M x N pods, and

    pod index i  ->  member i // N, node rank i % N

so a member's pods are consecutive and its node rank 0 is pod m x N. Kubernetes names an Indexed Job's pod
host `<job>-<i>`; with the Job's headless Service as the pod's subdomain it resolves as `<job>-<i>.<service>`,
which is where each member's torchrun rendezvous (its rank-0 pod) lives.

A container's command cannot compute i // N (the downward API gives the index, not arithmetic on it), so a
pod of such a gang runs `kwarp gang-node` (kwarp.core.cli_gang): it reads the index, sets KWARP_MEMBER and
torchrun's PET_NODE_RANK and PET_MASTER_ADDR with `node_env`, and starts torchrun.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UserError
from .spec import MEMBER_ENV

# The pod's completion index (a fieldRef to the Job controller's annotation, as KWARP_MEMBER is for a gang
# of one-node members); JOB_COMPLETION_INDEX, which the Job controller also sets, is read when it is absent.
INDEX_ENV = "KWARP_POD_INDEX"
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
# The gang's pod DNS names with "{index}" where the index goes: "<job>-{index}.<service>".
HOSTS_ENV = "KWARP_GANG_HOSTS"
INDEX_FIELD = "{index}"
NODES_ENV = "PET_NNODES"  # torchrun's --nnodes: the nodes of one member


@dataclass(frozen=True)
class Placement:
    """Pod `index` of a gang whose members span `nodes` pods each."""

    index: int
    nodes: int

    @property
    def member(self) -> int:
        return self.index // self.nodes

    @property
    def node_rank(self) -> int:
        return self.index % self.nodes

    @property
    def leader(self) -> int:
        """The pod index of the member's node rank 0, which hosts its rendezvous."""
        return self.member * self.nodes


def place(index: int, nodes: int) -> Placement:
    if nodes < 1 or index < 0:
        raise ValueError(f"a gang pod needs index >= 0 and nodes >= 1, got index {index}, nodes {nodes}")
    return Placement(index, nodes)


def pod_index(member: int, node_rank: int, nodes: int) -> int:
    """The inverse of `place`: the index of `member`'s pod of `node_rank`."""
    if not 0 <= node_rank < nodes or member < 0:
        raise ValueError(f"member {member}, node rank {node_rank} of {nodes}: out of range")
    return member * nodes + node_rank


def member_indexes(member: int, nodes: int) -> range:
    """The pod indexes of one member: its node ranks 0..nodes-1."""
    return range(member * nodes, (member + 1) * nodes)


def hosts_pattern(job: str, service: str) -> str:
    """The gang's pod DNS names, "<job>-{index}.<service>": Indexed Job host names in the Service's subdomain."""
    return f"{job}-{INDEX_FIELD}.{service}"


def node_env(index: int, nodes: int, hosts: str) -> dict[str, str]:
    """What pod `index` adds to its environment before torchrun: its member, its node rank and the address of
    its member's rank-0 pod (torchrun's static rendezvous; PET_NNODES, PET_NPROC_PER_NODE, PET_MASTER_PORT
    are the same for every pod and come from the Job)."""
    p = place(index, nodes)
    return {MEMBER_ENV: str(p.member), "PET_NODE_RANK": str(p.node_rank),
            "PET_MASTER_ADDR": hosts.replace(INDEX_FIELD, str(p.leader))}  # fmt: skip


def pod_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`node_env` from a gang pod's environment; a missing or bad variable is named."""

    def number(name: str, value: str | None) -> int:
        if value is None or not value.strip().isdigit():
            raise UserError(f"${name} is {value!r}: a pod of a multi-node gang needs it (set by its Job)")
        return int(value)

    index = number(INDEX_ENV, environ.get(INDEX_ENV, environ.get(JOB_INDEX_ENV)))
    nodes = number(NODES_ENV, environ.get(NODES_ENV))
    hosts = environ.get(HOSTS_ENV, "")
    if not hosts:
        raise UserError(f"${HOSTS_ENV} is empty: a pod of a multi-node gang needs its pods' names (set by its Job)")
    if nodes < 1:
        raise UserError(f"${NODES_ENV} is {nodes}: a member spans at least one node")
    return node_env(index, nodes, hosts)
