"""Kubernetes' name, label and annotation rules (k8s.io/apimachinery util/validation and api/validation),
as the API server applies them to every object's metadata. Pure functions returning error strings.

Followed: the same Kubernetes release as tests/apiextensions.py (1.36): IsDNS1123Subdomain, IsDNS1123Label,
IsDNS1035Label, IsQualifiedName, IsValidLabelValue, ValidateObjectMeta's name/labels/annotations checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
TOTAL_ANNOTATION_SIZE = 256 * 1024


def dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _DNS1123_LABEL.match(value):
        errs.append("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                    "and must start and end with an alphanumeric character")
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                    "and must start and end with an alphanumeric character")
    return errs


def dns1035_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _DNS1035_LABEL.match(value):
        errs.append("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                    "alphabetic character, and end with an alphanumeric character")
    return errs


def qualified_name(value: str) -> list[str]:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        errs = [f"prefix part {e}" for e in dns1123_subdomain(prefix)]
        if errs:
            return errs
    else:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an optional "
                "DNS subdomain prefix and '/'"]
    if not name:
        return ["name part must be non-empty"]
    errs = []
    if len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if not _QUALIFIED_NAME.match(name):
        errs.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                    "with an alphanumeric character")
    return errs


def label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errs.append("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character")
    return errs


def object_meta(meta: Mapping[str, Any], *, namespaced: bool, name_rule=dns1123_subdomain,
                path: str = "metadata") -> list[str]:
    """ValidateObjectMeta's checks of name, generateName, namespace, labels and annotations."""
    errs: list[str] = []
    name, generate = meta.get("name"), meta.get("generateName")
    if not name and not generate:
        errs.append(f"{path}.name: Required value: name or generateName is required")
    if name:
        errs += [f"{path}.name: Invalid value: {json.dumps(name)}: {e}" for e in name_rule(name)]
    if generate:
        # A generated name appends 5 characters: the prefix is checked as a name with a trailing character.
        errs += [f"{path}.generateName: Invalid value: {json.dumps(generate)}: {e}" for e in name_rule(generate + "a")]
    ns = meta.get("namespace")
    if namespaced and not ns:
        errs.append(f"{path}.namespace: Required value")
    elif not namespaced and ns:
        errs.append(f"{path}.namespace: Forbidden: not allowed on this type")
    for key, value in (meta.get("labels") or {}).items():
        errs += [f"{path}.labels: Invalid value: {json.dumps(key)}: {e}" for e in qualified_name(key)]
        if not isinstance(value, str):
            errs.append(f"{path}.labels: Invalid value: {json.dumps(value)}: must be a string")
        else:
            errs += [f"{path}.labels: Invalid value: {json.dumps(value)}: {e}" for e in label_value(value)]
    size = 0
    for key, value in (meta.get("annotations") or {}).items():
        errs += [f"{path}.annotations: Invalid value: {json.dumps(key)}: {e}" for e in qualified_name(key.lower())]
        size += len(key) + len(value if isinstance(value, str) else json.dumps(value))
    if size > TOTAL_ANNOTATION_SIZE:
        errs.append(f"{path}.annotations: Too long: must have at most {TOTAL_ANNOTATION_SIZE} bytes")
    return errs
