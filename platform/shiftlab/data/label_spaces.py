"""Label spaces as data: raw label values -> train ids, class names and a palette.

Built-in spaces live as YAML files next to this module (``label_spaces/*.yaml``); a user space is
any YAML file of the same shape, given by path. Decoding goes through a lookup table indexed by
the raw value, so 16-bit masks (Falcon: 10000 = Sky) are mapped exactly, never truncated.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shiftlab.utils.errors import ConfigError

IGNORE_INDEX = 255
_SUBSET_NAME = re.compile(r"^[a-z0-9_]+$")
_RESERVED = ("miou", "pixel_accuracy", "iou")  # metric keys of every set already
_BUILTIN_DIR = Path(__file__).parent / "label_spaces"
_LUT_SIZE = 65536  # every uint16 value


@dataclass(frozen=True)
class LabelSpace:
    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # (K, 3) uint8
    value_to_class: dict[int, int]  # raw value -> train id (IGNORE_INDEX for known ignore values)
    description: str = ""
    ignore_index: int = IGNORE_INDEX
    # Named class subsets whose mean IoU is reported next to the mIoU (cityscapes16: miou13,
    # the SYNTHIA -> Cityscapes literature's 13 classes), metric key ``.../<name>``.
    subsets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lut = np.full(_LUT_SIZE, self.ignore_index, dtype=np.uint8)
        for value, cls in self.value_to_class.items():
            lut[value] = cls
        object.__setattr__(self, "_lut", lut)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def max_raw_value(self) -> int:
        return max(self.value_to_class) if self.value_to_class else 0

    @property
    def needs_16bit(self) -> bool:
        """True when some raw value cannot be stored in an 8-bit mask."""
        return self.max_raw_value > 255

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ConfigError(
                f"label space {self.name!r} has no class {name!r}; classes: {', '.join(self.class_names)}"
            ) from None

    def _as_index(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw values as LUT indices, plus a mask of values the LUT cannot hold (<0 or >65535)."""
        if raw.dtype in (np.uint8, np.uint16):
            return raw, None
        wide = raw.astype(np.int64)
        outside = (wide < 0) | (wide >= _LUT_SIZE)
        return np.clip(wide, 0, _LUT_SIZE - 1), (outside if outside.any() else None)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values -> uint8 train ids; unknown values become the ignore index."""
        index, outside = self._as_index(raw)
        decoded = self._lut[index]
        if outside is not None:
            decoded[outside] = self.ignore_index
        return decoded

    def unknown_values(self, raw: np.ndarray) -> dict[int, int]:
        """Raw values not in this space, with their pixel counts."""
        if raw.dtype in (np.uint8, np.uint16):
            counts = np.bincount(raw.ravel(), minlength=1)
            values = np.flatnonzero(counts)
            pairs = zip(values.tolist(), counts[values].tolist(), strict=True)
        else:
            values, counts = np.unique(raw.astype(np.int64), return_counts=True)
            pairs = zip(values.tolist(), counts.tolist(), strict=True)
        return {v: c for v, c in pairs if v not in self.value_to_class}

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids -> RGB overlay colours (ignore is black)."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.palette
        return table[train_ids]

    def to_dict(self) -> dict[str, Any]:
        by_class: dict[int, list[int]] = {}
        ignore: list[int] = []
        for value, cls in sorted(self.value_to_class.items()):
            (ignore if cls == self.ignore_index else by_class.setdefault(cls, [])).append(value)
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "classes": [
                {"name": n, "values": by_class.get(i, []), "color": self.palette[i].tolist()}
                for i, n in enumerate(self.class_names)
            ],
            "ignore_values": ignore,
        }
        if self.subsets:
            out["subsets"] = {k: list(v) for k, v in self.subsets.items()}
        return out


class _SpaceParser:
    """Builds a LabelSpace from YAML data; every error names the file and the entry."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: list[str] = []
        self.colors: list[list[int]] = []
        self.mapping: dict[int, int] = {}

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {message}")

    def claim(self, value: Any, cls: int, where: str) -> None:
        if not isinstance(value, int) or not 0 <= value < _LUT_SIZE:
            raise self.fail(f"{where}: raw value {value!r} must be an integer in 0..65535")
        if value in self.mapping:
            raise self.fail(f"{where}: raw value {value} is listed twice")
        self.mapping[value] = cls

    def add_class(self, i: int, entry: Any) -> None:
        where = f"classes[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "values", "color"}:
            raise self.fail(f"{where} must be a mapping with keys name, values, color")
        cname, values, color = entry.get("name"), entry.get("values"), entry.get("color")
        if not isinstance(cname, str) or not cname:
            raise self.fail(f"{where}.name must be a non-empty string")
        if cname in self.names:
            raise self.fail(f"{where}.name {cname!r} is listed twice")
        if not isinstance(values, list) or not values:
            raise self.fail(f"{where}.values must be a non-empty list of raw values")
        color = _fallback_color(i) if color is None else color
        if not (
            isinstance(color, list)
            and len(color) == 3
            and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise self.fail(f"{where}.color must be [r, g, b] with 0..255 integers")
        for v in values:
            self.claim(v, i, f"{where}.values")
        self.names.append(cname)
        self.colors.append(color)

    def subsets(self, data: Any) -> dict[str, tuple[str, ...]]:
        """``{metric name: [class names]}``; every name a class, every metric name new."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.fail("subsets must be a mapping of metric name -> list of class names")
        out: dict[str, tuple[str, ...]] = {}
        for key, names in data.items():
            where = f"subsets.{key}"
            if not isinstance(key, str) or not _SUBSET_NAME.match(key) or key in _RESERVED:
                raise self.fail(f"{where}: a metric name of [a-z0-9_] that is not {_RESERVED}")
            if not isinstance(names, list) or not names:
                raise self.fail(f"{where} must be a non-empty list of class names")
            unknown = [n for n in names if n not in self.names]
            if unknown:
                raise self.fail(f"{where}: unknown classes {unknown}")
            out[key] = tuple(names)
        return out


def _parse(data: Any, source: str) -> LabelSpace:
    parser = _SpaceParser(source)
    if not isinstance(data, dict):
        raise parser.fail("a label space must be a mapping with 'name' and 'classes'")
    unknown = set(data) - {"name", "description", "classes", "ignore_values", "subsets"}
    if unknown:
        raise parser.fail(f"unknown key(s) {sorted(unknown)} in label space")
    name, classes = data.get("name"), data.get("classes")
    if not isinstance(name, str) or not name:
        raise parser.fail("'name' must be a non-empty string")
    if not isinstance(classes, list) or not classes:
        raise parser.fail("'classes' must be a non-empty list")
    if len(classes) > IGNORE_INDEX:
        raise parser.fail(f"at most {IGNORE_INDEX} classes (255 is the ignore index)")
    for i, entry in enumerate(classes):
        parser.add_class(i, entry)
    for v in data.get("ignore_values") or []:
        parser.claim(v, IGNORE_INDEX, "ignore_values")
    return LabelSpace(
        name=name,
        class_names=tuple(parser.names),
        palette=np.asarray(parser.colors, dtype=np.uint8),
        value_to_class=parser.mapping,
        description=str(data.get("description", "")),
        subsets=parser.subsets(data.get("subsets")),
    )


def _fallback_color(i: int) -> list[int]:
    rng = np.random.default_rng(i + 1)
    return rng.integers(40, 256, size=3).tolist()


def builtin_label_spaces() -> list[str]:
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


@functools.lru_cache(maxsize=64)
def get_label_space(name_or_path: str) -> LabelSpace:
    """A built-in space by name (``cityscapes``, ``falcon``, ...) or a user YAML file by path."""
    builtin = _BUILTIN_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        path = builtin
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"unknown label space {name_or_path!r}: not a built-in "
                f"({', '.join(builtin_label_spaces())}) and no such YAML file"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return _parse(data, str(path))
