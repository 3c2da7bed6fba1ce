"""Which parameters share one SLERP angle: grouping tensor names by granularity.

`layer` follows the paper (one angle per transformer block): a parameter whose name holds a block
index (`model.layers.3.`, `transformer.h.3.`, `gpt_neox.layers.3.`, `model.decoder.layers.3.`,
`transformer.blocks.3.`, ...) belongs to the group named by that prefix (`model.layers.3`); every
parameter outside the blocks (embeddings, final norm, head) is its own group. The prefix, not the
bare index, names the group, so that two stacks in one model (a vision tower's `encoder.layers.3`
and the language model's `model.layers.3`) stay apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

Granularity = Literal["layer", "tensor", "model"]
GRANULARITIES: tuple[Granularity, ...] = ("layer", "tensor", "model")
MODEL_GROUP = "model"

# A container of blocks followed by an index: `<...>layers.3.`, `<...>h.3.`, `<...>blocks.3.`.
# The container name must be a whole dotted component (so `mlp.dense_h_to_4h.3` is no block) and the
# index must be followed by a further component (a parameter *inside* the block).
_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+\.")


def block_prefix(name: str) -> str | None:
    """`model.layers.3.mlp.up_proj.weight` -> `model.layers.3`; None for a parameter outside the blocks.

    The outermost block index wins: in `encoder.block.0.layer.1.DenseReluDense.wi.weight` (T5) the
    transformer block is `encoder.block.0`, and `layer.1` is a sub-layer inside it.
    """
    match = _BLOCK.search(name)
    if match is None:
        return None
    return name[: match.end() - 1]


def group_of(name: str, granularity: Granularity) -> str:
    if granularity == "tensor":
        return name
    if granularity == "model":
        return MODEL_GROUP
    if granularity == "layer":
        return block_prefix(name) or name
    raise ValueError(f"unknown granularity '{granularity}'; use one of {', '.join(GRANULARITIES)}")


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    # "model.layers.10" sorts after "model.layers.2"; digits compare as numbers, text as text.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def group_names(names: Iterable[str], granularity: Granularity) -> dict[str, list[str]]:
    """{group: [tensor names]} with groups and their members in natural order (layer 2 before 10)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_of(name, granularity), []).append(name)
    return {g: sorted(groups[g], key=_natural_key) for g in sorted(groups, key=_natural_key)}
