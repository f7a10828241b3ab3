"""Typed YAML configs with ``key.sub=value`` overrides.

Every section is a ``StrictModel``: an unknown or misspelt key is an error that names the key and the file, so a
setting can never be silently ignored (an earlier tool ignored ``pretrained_weights`` and trained from random
weights while the user believed it continued from a checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_text


class ConfigError(DinocellError, ValueError):
    """A config file or override is invalid; the message names the file and key."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment too, and floats must
    be finite (``optim.lr=.inf`` made a run skip every step and still "finish")."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StrictSettings(StrictModel):
    """Base for settings built in code and on the command line (``profile embed``'s, ``jump label``'s): an unknown
    key or bad value raises :attr:`error`, the domain's one-line error naming the key, instead of pydantic's
    ValidationError. Nested in a config file's model (the pretraining ``eval:`` section) the same fields report
    through :func:`validate_config` like every other section."""

    error: ClassVar[type[Exception]] = ConfigError

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise self.error(settings_error(exc, type(self))) from None

    # pydantic calls a model's own __init__ when it validates it as a nested section; this one only translates
    # errors, so a section (``eval:``) is validated like any other and its errors keep their full key path
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise self.error(settings_error(exc, type(self))) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise cls.error(settings_error(exc, cls)) from None


def settings_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for every problem of ``exc``: an unknown key with the keys there are, a bad value with its key
    (the models' own checks name their keys themselves)."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = f" (settings: {', '.join(model.model_fields)})" if len(err["loc"]) == 1 else ""
            parts.append(f"unknown setting {key!r}{known}")
        elif err["type"] == "value_error":
            parts.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            parts.append(f"{key or model.__name__}: {err['msg']}")
    return "; ".join(parts)


M = TypeVar("M", bound=StrictModel)

#: the recipes shipped inside the package (the repository's ``configs/`` is a link to this folder), so an installed
#: wheel has them too: the napari forms' defaults and ``dinocell-core demo`` read them from here.
RECIPES = Path(__file__).resolve().parent / "recipes"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and the YAML-parsed value (``lr=1e-4`` gives a float)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = safe_yaml(raw, f"override {key.strip()}=…") if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each override applied; intermediate sections are created as needed."""
    out: dict[str, Any] = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


#: how a network computes (training, segmentation, embedding): ``auto`` is bf16 on a CUDA GPU that has it and fp32
#: elsewhere; never fp16 (its range overflows). Here, torch-free, so settings models and CLI choices share it.
PrecisionName = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)

#: a config file larger than this is refused before it is parsed (the packaged recipes are ~5 KB)
MAX_CONFIG_BYTES = 1_000_000
#: values a YAML document may expand to once its aliases are followed (a real config has a few hundred): a 1 KB
#: file of nested aliases expands to billions, which hung the process when a config was copied key by key
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that first counts the values the document expands to (every alias followed) and refuses
    more than :data:`MAX_YAML_VALUES`, deeper nesting than :data:`MAX_YAML_DEPTH` and recursive aliases, naming
    ``source``; the count runs on the parsed node graph, so a bomb costs no more than its own bytes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_values(node, source, {}, set(), 0)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _expanded_values(node: yaml.Node, source: str, sizes: dict[int, int], path: set[int], depth: int) -> int:
    """The number of values ``node`` stands for with its aliases expanded (``sizes`` memoises shared nodes)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        raise ConfigError(f"{source}: a YAML alias refers to a value that contains it (a recursive alias)")
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(f"{source}: YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)")
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    path.add(key)
    total = 1
    for child in children:
        total += _expanded_values(child, source, sizes, path, depth + 1)
        if total > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an alias "
                              "bomb?); write the values out")
    path.discard(key)
    sizes[key] = total
    return total


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config may have")
    try:
        data = safe_yaml(p.read_text(encoding="utf-8"), f"config file {p}")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, found {type(data).__name__}")
    return data


def validate_config(model_cls: type[M], data: Mapping[str, Any], source: str = "config") -> M:
    """Validate ``data`` against ``model_cls``; errors list every bad key as ``source: key.sub: problem``."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            msg = "unknown key (not used by this job)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(model_cls: type[M], path: str | Path | None = None, overrides: Sequence[str] = ()) -> M:
    """Load a YAML file (or the model's defaults when ``path`` is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " + overrides"
    return validate_config(model_cls, data, source)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k != "kwargs":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_changes(old: Mapping[str, Any], new: BaseModel, source: str | Path,
                         allowed: Sequence[str], allow_all: bool = False) -> dict[str, list[Any]]:
    """Refuse resuming a run (whose config was ``old``, from ``source``) with a config that changes any key
    outside ``allowed``: the checkpoint was trained with the old values. ``allow_all`` is the user's explicit
    ``--allow-config-change``: the changes (``{key: [old, new]}``) are returned for the caller to record in the run."""
    a, b = _flat(old), _flat(config_to_dict(new))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in allowed)
    if changed and not allow_all:
        details = "; ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"{source}: this run has checkpoints and the new config changes {details}. "
                          f"Resume with the run's own config, start a new --run-dir, or pass --allow-config-change "
                          f"to go on with the new values (recorded in the run's config_history.jsonl).")
    return {k: [a.get(k), b.get(k)] for k in changed}


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain, YAML-safe dict (paths and tuples become strings and lists)."""
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the fully resolved config (defaults included) so a run records exactly what it used."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
