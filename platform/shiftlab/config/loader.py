"""Load an experiment YAML, apply ``a.b.c=value`` overrides, validate, and explain errors.

Errors name the file and the dotted key, e.g.
``experiments/x.yaml: method.align_weight: Input should be greater than or equal to 0 (got -1)``.
An experiment may start with ``extends: other.yaml`` (relative to itself) to share a base.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from shiftlab.config import method, model
from shiftlab.config.schema import ExperimentConfig
from shiftlab.utils.atomic import write_text
from shiftlab.utils.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}{_yaml_hint(path, exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _yaml_hint(path: Path, exc: yaml.YAMLError) -> str:
    """The usual cause of a bare parse error in an experiment file: ``${VAR}`` unquoted inside
    a ``{...}`` flow mapping, where YAML reads its braces as structure."""
    mark = getattr(exc, "problem_mark", None)
    lines = path.read_text().splitlines() if path.is_file() else []
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    if mark is not None and "${" in line and "{" in line.split("${", 1)[0]:
        return (
            f"\n  (line {mark.line + 1}: a ${{VAR}} inside {{...}} must be quoted, e.g. "
            'root: "${DATA_ROOT}/cityscapes")'
        )
    return ""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: must be a file path")
    return deep_merge(read_with_extends(path.parent / base, (*seen, path)), data)


def expand_env(value: Any, key: str = "") -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in strings (cluster paths differ per machine).

    An unset variable without a default is an error naming the key it was used for.
    """
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}environment variable {m.group(1)} is not set (used as {m.group(0)})"
            )

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}.{i}") for i, v in enumerate(value)]
    return value


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists, creating dicts on the way."""
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"override {dotted}: {'.'.join(keys[: i + 1])} is not an index of that list"
                )
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(keys[:i])} is not a mapping")
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: take the text as a string
    return key, value


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        if err["type"] == "missing" and loc.endswith("pretrained"):
            msg = "required: a local weights file or folder, or none for random initialisation"
        lines.append(f"{source}: {loc or '<top>'}: {msg}{shown}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the chosen union member ("sdgpa", "function-after[...]") into the location
    return isinstance(part, str) and (part.startswith("function-") or part in _union_tags())


def _union_tags() -> set[str]:
    tags = set()
    for mod, attr in ((method, "METHOD_CONFIG_TYPES"), (model, "MODEL_CONFIG_TYPES")):
        for cls in getattr(mod, attr, ()):
            tags.add(cls.model_fields["name"].default)
    return tags


def validate_dict(data: dict[str, Any], source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_experiment(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Read, merge, override and validate an experiment file into an ``ExperimentConfig``."""
    path = Path(path)
    try:
        data = expand_env(read_with_extends(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value)
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return validate_dict(data, source)


def resolved_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_resolved(cfg: BaseModel, path: str | Path) -> Path:
    """The fully resolved config (defaults filled in) saved with every run."""
    write_text(path, resolved_yaml(cfg))
    return Path(path)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value} (MLflow params, sweep keys)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}
