"""The registry of merge methods: one explicit dict, filled here and nowhere else (no import side effects)."""

from __future__ import annotations

from kwarp.core.errors import UserError
from kwarp.merger.combination import MergeMethod
from kwarp.merger.linear import Linear
from kwarp.merger.slerp import Slerp

METHODS: dict[str, MergeMethod] = {
    "slerp": Slerp(),
    "linear": Linear(),
}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown merge method '{name}'; choose one of: {', '.join(METHODS)}") from None
