"""The base of every WarpRun model (camelCase names, frozen, unknown fields refused), the error a bad document
raises, and the check every storage location gets. Shared by kwarp/core/spec.py and kwarp/core/resources.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

LOCATION_SCHEMES = ("file://", "s3://", "hf://")


class SpecError(ValueError):
    """A WarpRun document is invalid. The message names each bad field and what is allowed."""


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )


def check_location(value: str, field: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"{field} must not be empty; give a path, file://, s3:// or hf:// location")
    if "://" in value and not value.startswith(LOCATION_SCHEMES):
        scheme = value.split("://", 1)[0]
        raise ValueError(
            f"{field}: unsupported scheme '{scheme}://'; use a local path, file://, s3:// or hf://org/name"
        )
    if value.startswith("hf://") and value.count("/") < 3:
        raise ValueError(f"{field}: hf:// locations look like hf://org/name, got '{value}'")
    return value
