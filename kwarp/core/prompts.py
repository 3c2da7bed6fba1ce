"""Prompt files: JSONL with one object per line. No torch here: `kwarp prepare` checks them cheaply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kwarp.core import locations
from kwarp.core.errors import UserError

if TYPE_CHECKING:
    from kwarp.core.spec import StorageSpec


def read_prompts(
    location: str | Path,
    field: str = "prompt",
    *,
    storage: StorageSpec | None = None,
    limit: int | None = None,
    spec_field: str = "spec.data",
) -> list[str]:
    """Prompts of a JSONL file (one object per line); a bad line is a UserError naming file and line."""
    path = location if isinstance(location, Path) else locations.fetch(location, spec_field, storage)
    if not Path(path).is_file():
        raise UserError(f"{spec_field}: {path} does not exist or is not a file; give a JSONL file of prompts")
    prompts: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as err:
                    raise UserError(f"{spec_field}: {path} line {lineno} is not valid JSON ({err})") from None
                value = obj.get(field) if isinstance(obj, dict) else None
                if not isinstance(value, str) or not value.strip():
                    raise UserError(
                        f"{spec_field}: {path} line {lineno} has no non-empty string field '{field}' "
                        "(set spec.data.promptField if the prompts use another key)"
                    )
                prompts.append(value)
                if limit is not None and len(prompts) >= limit:
                    break
    except UnicodeDecodeError as err:
        raise UserError(f"{spec_field}: {path} is not UTF-8 text ({err})") from None
    if not prompts:
        raise UserError(f"{spec_field}: {path} holds no prompts")
    return prompts
