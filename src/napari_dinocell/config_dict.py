"""Dotted-key access to nested config dicts and pydantic schemas (no Qt: the forms' data side).

The forms show a few keys as widgets and the rest as YAML; these helpers move values between the two by dotted
key (``train.batch_size``) and read a key's type from the schema so the form can pick an editor for it.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def field_annotation(model: type[BaseModel], dotted: str) -> Any:
    """The (Optional-stripped) annotation of ``dotted`` in a nested pydantic model."""
    node: Any = model
    ann: Any = None
    for part in dotted.split("."):
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            raise KeyError(f"{model.__name__} has no key {dotted!r}")
        ann = _strip_optional(node.model_fields[part].annotation)
        node = ann
    return ann


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def get_nested(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def pop_nested(data: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def prune_empty(data: dict[str, Any]) -> dict[str, Any]:
    """Drop sections left empty once the main keys are taken out (keeps the YAML short)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = prune_empty(value)
            if not value:
                continue
        out[key] = value
    return out


def set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
