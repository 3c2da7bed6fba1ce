"""The CRD is generated from the spec model: structural, with status, printer columns and short name."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from kwarp.core.crd import crd
from kwarp.core.spec import parse

from .test_spec import MINIMAL, doc


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: Any, path: str = "$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_crd_identity() -> None:
    c = crd()
    assert c["metadata"]["name"] == "warpruns.kwarp.dev"
    names = c["spec"]["names"]
    assert names["kind"] == "WarpRun" and names["shortNames"] == ["wr"] and "kwarp" in names["categories"]
    version = c["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = [col["name"] for col in version["additionalPrinterColumns"]]
    assert cols == ["Phase", "Iteration", "Members", "Reward", "KL", "Age"]


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node and "oneOf" not in node, path
        if "properties" in node:
            for name, prop in node["properties"].items():
                assert "type" in prop or prop.get("x-kubernetes-preserve-unknown-fields"), f"{path}.{name}"


def test_status_is_declared() -> None:
    status = _schema()["properties"]["status"]["properties"]
    for field in ("phase", "iteration", "membersDone", "reward", "kl", "members", "pareto", "conditions", "observedGeneration"):
        assert field in status


@pytest.mark.parametrize(
    "document",
    [MINIMAL, doc(**{"spec.warp.steps": [100, 50], "spec.resources": {"trainer": {"gpus": 4, "tolerations": [{"key": "gpu", "operator": "Exists"}]}}})],
)
def test_crd_round_trips_a_document(document: dict) -> None:
    """The full document (every default filled in) validates against the generated schema and parses back."""
    full = parse(document).to_document()
    jsonschema.validate(full["spec"], _openapi_to_jsonschema(_schema()["properties"]["spec"]))
    assert parse(full) == parse(document)


def test_crd_rejects_what_the_model_rejects() -> None:
    bad = parse(MINIMAL).to_document()["spec"]
    bad["warp"]["anchor"] = "kl"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _openapi_to_jsonschema(_schema()["properties"]["spec"]))


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI's `nullable` as JSON Schema, so jsonschema can check what the API server would."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out
