"""The CRD is generated from the spec model: structural, with status, printer columns and short name; it and
the models declare the same fields, and it treats documents as the API server would (tests/customresource.py)."""

from __future__ import annotations

import copy
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from kwarp.core.crd import crd
from kwarp.core.spec import SpecError, WarpRunSpec, parse
from kwarp.core.status import WarpRunStatus

from . import customresource
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
    assert cols == ["Phase", "Iteration", "Members", "Reward", "KL", "Progress", "ETA", "Age"]


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
    """As the API server stores it (pruned, defaulted, validated against the CRD) the document parses to the
    same run, and the full document (every default filled in) is stored unchanged."""
    stored, warnings = customresource.admit(document, _schema(), field_validation="Strict")
    assert warnings == [] and parse(stored).spec == parse(document).spec
    full = parse(document).to_document()
    again, _ = customresource.admit(full, _schema(), field_validation="Strict")
    assert again["spec"] == full["spec"]


@pytest.mark.parametrize(
    ("patch", "cause"),
    [
        ({"spec.warp.anchor": "kl"}, 'spec.warp.anchor: Unsupported value: "kl"'),
        ({"spec.warp.beta": -1}, "spec.warp.beta in body should be greater than or equal to 0"),
        ({"spec.training.temperature": 0}, "spec.training.temperature in body should be greater than 0"),
        ({"spec.training.learningRate": "fast"}, "spec.training.learningRate in body must be of type number"),
        ({"spec.policy": {}}, "spec.policy.location: Required value"),
        ({"spec.data.promptField": ""}, "spec.data.promptField in body should be at least 1 chars long"),
    ],
)
def test_crd_rejects_what_the_model_rejects(patch: dict, cause: str) -> None:
    with pytest.raises(customresource.InvalidError) as info:
        customresource.admit(doc(**patch), _schema())
    assert any(cause in c for c in info.value.causes), info.value.causes
    with pytest.raises(SpecError):
        parse(doc(**patch))


def test_nullable_fields_take_null_and_other_nulls_mean_absent() -> None:
    """`nullable` fields keep a null; a null elsewhere is dropped (or defaulted) before validation."""
    document = doc(**{"spec.training.maxGradNorm": None, "spec.warp.beta": None,
                      "spec.resources": {"trainer": {"tolerations": [{"key": "gpu", "operator": None}]}}})
    stored, _ = customresource.admit(document, _schema(), field_validation="Strict")
    assert stored["spec"]["training"]["maxGradNorm"] is None  # null disables clipping
    assert stored["spec"]["warp"]["beta"] == 0.1  # a null where none is allowed takes the default
    assert stored["spec"]["resources"]["trainer"]["tolerations"] == [{"key": "gpu"}]
    assert parse(stored).spec.training.max_grad_norm is None


# ------------------------------------------------------------------------------ the CRD and the models agree


def _nested_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('', M) for a model field, ('items', M) for list[M], ('additionalProperties', M) for dict[str, M]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [n for a in args if a is not type(None) and (n := _nested_model(a)) is not None]
        return found[0] if found else None
    if origin is list and args:
        inner = _nested_model(args[0])
        return ("items", inner[1]) if inner else None
    if origin is dict and len(args) == 2:
        inner = _nested_model(args[1])
        return ("additionalProperties", inner[1]) if inner else None
    return None


def _pairs(schema: dict[str, Any], model: type[BaseModel], path: str) -> typing.Iterator[tuple[str, dict, type[BaseModel]]]:
    yield path, schema, model
    for name, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is None:
            continue
        where, sub = nested
        node = schema["properties"][info.alias or name]
        yield from _pairs(node[where] if where else node, sub, f"{path}.{info.alias or name}")


def test_crd_and_models_declare_the_same_fields_at_every_level() -> None:
    """Every property the CRD declares is a field the parser reads by that exact name, and vice versa,
    nested models (and `lambda`) included: nothing the API server would prune is read by kwarp."""
    root = _schema()
    pairs = list(_pairs(root["properties"]["spec"], WarpRunSpec, "spec"))
    pairs += list(_pairs(root["properties"]["status"], WarpRunStatus, "status"))
    assert len(pairs) > 15
    for path, node, model in pairs:
        declared = set(node["properties"])
        read = {info.alias or name for name, info in model.model_fields.items()}
        assert declared == read, f"{path}: CRD only {declared - read}, model only {read - declared}"
    assert "lambda" in root["properties"]["spec"]["properties"]["warp"]["properties"]["slerp"]["properties"]


def _snake_paths() -> list[tuple[str, str]]:
    """(camelCase path, snake_case path) of every spec field whose Python name differs from its YAML name."""
    out = []
    for path, _node, model in _pairs(_schema()["properties"]["spec"], WarpRunSpec, "spec"):
        if "." in path and any(seg in ("tolerations",) for seg in path.split(".")):
            continue  # inside a list: covered by the model-level equality above
        for name, info in model.model_fields.items():
            if info.alias and info.alias != name:
                out.append((f"{path}.{info.alias}", f"{path}.{name}"))
    return out


@pytest.mark.parametrize(("camel", "snake"), _snake_paths(), ids=lambda p: p)
def test_documents_accept_only_the_crds_spelling(camel: str, snake: str) -> None:
    """`learning_rate` used to pass `kwarp validate` and train with it, while the API server pruned it."""
    # Every optional object present (goldReward), so that each nested field has a place to go.
    base = doc(**{"spec.evaluation.goldReward": {"callable": "kwarp.tasks.sentiment:reward"}})
    node, schema = parse(base).to_document(), {"properties": {"spec": _schema()["properties"]["spec"]}}
    for key in camel.split("."):
        node, schema = (node or {}).get(key), schema["properties"][key]
    # The default where there is one, else a valid value of the field's type (a unset optional field).
    value = node if node is not None else {"integer": 1, "number": 0.5, "string": "x"}[schema["type"]]
    if key in ("ephemeralStorage", "scratchSizeLimit"):
        value = "1Gi"  # a Kubernetes quantity

    def patched(path: str) -> dict:
        out = copy.deepcopy(base)
        target = out
        *head, last = path.split(".")
        for key in head:
            target = target.setdefault(key, {})
        target[last] = value
        return out

    with pytest.raises(SpecError) as info:
        parse(patched(snake))
    message = str(info.value)
    assert snake in message and f"did you mean '{camel.rsplit('.', 1)[1]}'" in message, message
    assert parse(patched(camel)) is not None


def test_snake_case_is_pruned_by_the_api_server_and_refused_by_strict_validation() -> None:
    document = doc(**{"spec.training": {"learning_rate": 1e-5}})
    schema = _schema()
    with pytest.raises(customresource.FieldValidationError, match='unknown field "spec.training.learning_rate"'):
        customresource.admit(document, schema, field_validation="Strict")
    stored, warnings = customresource.admit(document, schema, field_validation="Warn")
    assert warnings == ['unknown field "spec.training.learning_rate"']
    assert stored["spec"]["training"]["learningRate"] == 1e-6  # what the cluster would have trained with
    with pytest.raises(SpecError, match="did you mean 'learningRate'"):
        parse(document)


@pytest.mark.parametrize("patch", [
    {"spec.warp.iterations": "3"},
    {"spec.suspend": "yes"},
    {"spec.training.learningRate": "1e-5"},
    {"spec.storage.secure": 0},
    {"spec.policy.location": 7},
    {"spec.evaluation.etas": "0.5"},
])
def test_values_of_the_wrong_type_are_refused_by_both(patch: dict) -> None:
    """No coercion on either side: what the API server refuses for its type, `kwarp validate` refuses too."""
    with pytest.raises(customresource.InvalidError, match="in body must be of type"):
        customresource.admit(doc(**patch), _schema())
    with pytest.raises(SpecError):
        parse(doc(**patch))
