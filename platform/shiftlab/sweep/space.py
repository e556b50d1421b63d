"""Tune search spaces as YAML: which config keys a sweep varies, over which values.

A space file::

    metric: val_miou          # default; the value Tune and the leaderboard rank by
    mode: max                 # max | min
    seeds: [0, 1, 2]          # optional: every configuration runs once per seed
    num_samples: 4            # optional: samples of the non-grid parameters (random search)
    asha: {grace_period: 1, reduction_factor: 2, max_t: 100}   # optional, --scheduler asha
    parameters:
      method.zodi_weight: {grid: [0.0, 0.1]}
      generate.editor.strength: {choice: [0.5, 1.0]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      method.class_weights.Rocks: {uniform: [1.0, 4.0]}

Ranges follow Ray Tune: ``randint: [lo, hi]`` excludes ``hi``; ``qrandint`` includes it.
The whole space is checked against the experiment before anything runs (see ``validate_space``).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftlab.config.data import DatasetSpec
from shiftlab.config.loader import read_yaml, set_path, validate_dict
from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.formats import label_space_name
from shiftlab.data.label_spaces import LabelSpace, get_label_space
from shiftlab.evaluate.metrics import class_key
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.seeding import derive_seed

# kind -> number of arguments (None: a non-empty list of values)
KINDS: dict[str, int | None] = {
    "choice": None,
    "grid": None,
    "uniform": 2,
    "loguniform": 2,
    "randint": 2,
    "quniform": 3,
    "qloguniform": 3,
    "qrandint": 3,
}
_TOP_KEYS = {"metric", "mode", "seeds", "num_samples", "parameters", "description", "asha"}
# ASHA settings a space may set (in training iterations: one per epoch, plus the final report).
_ASHA_KEYS = {"max_t", "grace_period", "reduction_factor"}
# Config mappings whose keys are free names (so a sweep may add a key that is not there yet).
_FREE_MAPPINGS = {"method.class_weights", "tracking.tags", "model.backbone_kwargs"}


@dataclass(frozen=True)
class Param:
    key: str
    kind: str
    args: tuple[Any, ...]

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    def candidates(self) -> list[Any]:
        """Values that validation tries: every listed value, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if self.kind == "randint":
            return [lo, hi - 1]  # Tune's randint excludes the upper bound
        return [lo, hi]

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"

    def tune_domain(self, for_optuna: bool = False) -> Any:
        from ray import tune

        a = self.args
        if self.kind == "grid":
            # Optuna has no grid: it samples the listed values instead.
            return tune.choice(list(a)) if for_optuna else tune.grid_search(list(a))
        if self.kind == "choice":
            return tune.choice(list(a))
        return {
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "randint": lambda: tune.randint(a[0], a[1]),
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "qloguniform": lambda: tune.qloguniform(a[0], a[1], a[2]),
            "qrandint": lambda: tune.qrandint(a[0], a[1], a[2]),
        }[self.kind]()


@dataclass(frozen=True)
class SearchSpace:
    path: str
    parameters: dict[str, Param]
    metric: str = "val_miou"
    mode: str = "max"
    seeds: list[int] | None = None
    num_samples: int | None = None
    asha: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def seed_list(self) -> list[int | None]:
        """The seeds each configuration runs with (None: the experiment's own seed)."""
        return list(self.seeds) if self.seeds else [None]

    def grid_params(self) -> list[Param]:
        return [p for p in self.parameters.values() if p.is_grid]

    def sampled_params(self) -> list[Param]:
        return [p for p in self.parameters.values() if not p.is_grid]


def _number(value: Any, where: str, integer: bool = False) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(
            f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}"
        )
    return value


def _parse_param(path: str, key: str, spec: Any) -> Param:
    where = f"{path}: parameters.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {{{'|'.join(KINDS)}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, got {args!r}")
    n = KINDS[kind]
    if n is None:
        return Param(key, kind, tuple(args))
    if len(args) != n:
        shape = "[lo, hi]" if n == 2 else "[lo, hi, q]"
        raise ConfigError(f"{where}: {kind} needs {shape}, got {args!r}")
    integer = kind in ("randint", "qrandint")
    nums = [_number(v, where, integer) for v in args]
    lo, hi = nums[0], nums[1]
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} needs lo < hi, got {args!r}")
    if kind in ("loguniform", "qloguniform") and lo <= 0:
        raise ConfigError(f"{where}: {kind} needs lo > 0, got {args!r}")
    if n == 3 and nums[2] <= 0:
        raise ConfigError(f"{where}: {kind} needs q > 0, got {args!r}")
    return Param(key, kind, tuple(nums))


def _parse_seeds(data: dict[str, Any], path: str, parsed: dict[str, Param]) -> list[int] | None:
    seeds = data.get("seeds")
    if seeds is None:
        return None
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{path}: seeds: must be a non-empty list of integers")
    seeds = [int(_number(s, f"{path}: seeds", integer=True)) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds: lists a seed twice: {seeds}")
    if "seed" in parsed:
        raise ConfigError(f"{path}: give seeds either in 'seeds' or as parameter 'seed', not both")
    return seeds


def _parse_asha(data: dict[str, Any], path: str) -> dict[str, int]:
    asha = data.get("asha") or {}
    if not isinstance(asha, dict) or set(asha) - _ASHA_KEYS:
        raise ConfigError(
            f"{path}: asha: a mapping with keys among {sorted(_ASHA_KEYS)}, got {asha!r}"
        )
    asha = {k: int(_number(v, f"{path}: asha.{k}", integer=True)) for k, v in asha.items()}
    if any(v < 1 for v in asha.values()) or asha.get("reduction_factor", 2) < 2:
        raise ConfigError(f"{path}: asha: values must be >= 1 (reduction_factor >= 2), got {asha}")
    return asha


def parse_space(data: dict[str, Any], path: str) -> SearchSpace:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    params = data.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(
            f"{path}: parameters: needs at least one 'dotted.key: {{kind: ...}}' entry"
        )
    parsed = {str(k): _parse_param(path, str(k), v) for k, v in params.items()}
    metric = data.get("metric", "val_miou")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{path}: metric: must be a metric name such as val_miou")
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode: must be 'max' or 'min', got {mode!r}")
    num_samples = data.get("num_samples")
    if num_samples is not None:
        num_samples = int(_number(num_samples, f"{path}: num_samples", integer=True))
        if num_samples < 1:
            raise ConfigError(f"{path}: num_samples: must be >= 1")
    seeds = _parse_seeds(data, path, parsed)
    return SearchSpace(
        path, parsed, metric, mode, seeds, num_samples, _parse_asha(data, path), raw=data
    )


def load_space(path: str | Path) -> SearchSpace:
    return parse_space(read_yaml(Path(path)), str(path))


# ---------------------------------------------------------------------------------------
# Validation against the experiment


def _key_exists(base: dict[str, Any], key: str) -> tuple[bool, str | None]:
    """Whether ``key`` names a config value; the second item names a free mapping it adds to."""
    node: Any = base
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif prefix in _FREE_MAPPINGS and isinstance(node, dict) and i == len(parts) - 1:
            return True, prefix
        else:
            return False, None
    if any(key.startswith(p + ".") for p in _FREE_MAPPINGS):
        return True, key.rsplit(".", 1)[0]
    return True, None


def source_label_space(cfg: ExperimentConfig) -> LabelSpace:
    """The label space of the experiment's source data (class-weight names refer to it)."""
    return get_label_space(label_space_name(cfg.data.source))


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(base))  # a deep copy of plain JSON values
    for key, value in params.items():
        set_path(data, key, value)
    return data


def ranking_sets(cfg: ExperimentConfig, metric: str) -> list[DatasetSpec]:
    """The validation sets whose labels a sweep's ``metric`` ranks on; a metric no trial will
    report (a typo, a test metric) is a ConfigError listing the ones it may name."""
    names = [s.display_name for s in cfg.data.val]
    if metric == "val_miou" and names:
        return list(cfg.data.val)
    parts = metric.split("/")
    if len(parts) >= 3 and parts[0] == "val" and parts[1] in names:
        kind = "/".join(parts[2:])
        classes = {class_key(c) for c in source_label_space(cfg).class_names}
        if kind in ("miou", "pixel_accuracy") or (
            parts[2] == "iou" and "/".join(parts[3:]) in classes
        ):
            return [s for s in cfg.data.val if s.display_name == parts[1]]
    valid = ["val_miou"] + [
        f"val/{n}/{k}" for n in names for k in ("miou", "pixel_accuracy", "iou/<class>")
    ]
    why = (
        " (a sweep ranks on validation data, never on a test set)"
        if metric.startswith("test")
        else ""
    )
    raise ConfigError(
        f"metric: {metric!r} is not a metric the trials report{why}; "
        + (f"use one of {valid}" if names else "the experiment has no data.val sets to rank on")
    )


def validate_space(
    space: SearchSpace, cfg: ExperimentConfig, experiment: str = "experiment"
) -> None:
    """The ranking metric exists, and every candidate value of every parameter, applied alone
    to the experiment, validates. Raises ConfigError naming the space file and the key.
    """
    try:
        ranking_sets(cfg, space.metric)
    except ConfigError as exc:
        raise ConfigError(f"{space.path}: {exc}") from None
    base = cfg.model_dump(mode="json")
    label_space = None
    for key, param in space.parameters.items():
        where = f"{space.path}: parameters.{key}"
        exists, mapping = _key_exists(base, key)
        if not exists:
            raise ConfigError(
                f"{where}: {experiment} has no config key {key!r} (a sweep key must name an "
                "existing setting, e.g. method.zodi_weight, optim.lr, generate.editor.strength)"
            )
        if mapping == "method.class_weights":
            label_space = label_space or source_label_space(cfg)
            name = key[len(mapping) + 1 :]
            if name not in label_space.class_names:
                raise ConfigError(
                    f"{where}: {name!r} is not a class of label space {label_space.name!r} "
                    f"(classes: {', '.join(label_space.class_names)})"
                )
        for value in param.candidates():
            try:
                validate_dict(apply_params(base, {key: value}), f"{where}={value!r}")
            except ConfigError as exc:
                raise ConfigError(
                    f"{exc}\n({experiment} with {key}={value!r} from {space.path})"
                ) from None


# ---------------------------------------------------------------------------------------
# Expansion into trials (random search): deterministic, so a resumed sweep sees the same trials


@dataclass(frozen=True)
class TrialSpec:
    index: int  # position in the sweep: t00, t01, ...
    config_id: str  # trials that differ only in the seed share it
    params: dict[str, Any]  # the swept values (without the seed)
    seed: int | None

    @property
    def key(self) -> str:
        """The deterministic identity of the trial (MLflow child runs are found by it)."""
        return f"{self.config_id}-s{self.seed if self.seed is not None else 'x'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "config_id": self.config_id,
            "params": self.params,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        return cls(
            int(data["index"]), str(data["config_id"]), dict(data["params"]), data.get("seed")
        )


def _plain(value: Any) -> Any:
    """numpy scalars from Tune's samplers -> Python numbers (YAML/JSON/MLflow friendly)."""
    if hasattr(value, "item"):
        return value.item()
    return value


def expand_trials(space: SearchSpace, num_samples: int, sweep_seed: int) -> list[TrialSpec]:
    """Grid values x ``num_samples`` draws of the other parameters x seeds (Tune's semantics:
    every grid point gets its own samples). Draws are seeded from the sweep seed."""
    import numpy as np

    grid = space.grid_params()
    sampled = space.sampled_params()
    combos = list(itertools.product(*[p.args for p in grid])) if grid else [()]
    configs: list[dict[str, Any]] = []
    for _sample in range(num_samples):
        for combo in combos:
            params: dict[str, Any] = {}
            for p in space.parameters.values():
                if p.is_grid:
                    params[p.key] = combo[grid.index(p)]
                else:
                    rng = np.random.default_rng(
                        derive_seed(sweep_seed, "sweep", len(configs), p.key)
                    )
                    params[p.key] = _plain(p.tune_domain().sample(random_state=rng))
            configs.append(params)
        if not sampled:
            break  # a pure grid: more samples would only repeat it
    trials: list[TrialSpec] = []
    for ci, params in enumerate(configs):
        for seed in space.seed_list:
            trials.append(TrialSpec(len(trials), f"c{ci:02d}", params, seed))
    return trials


def short_key(key: str) -> str:
    """``method.zodi_weight`` -> ``zodi_weight``; class weights keep the class name."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] == "class_weights":
        return f"w[{parts[-1]}]"
    return parts[-1]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_name(index: int, params: dict[str, Any], seed: int | None) -> str:
    """A readable run name: ``t03 lr=0.001 zodi_weight=0.1 seed=1``."""
    parts = [f"t{index:02d}"] + [f"{short_key(k)}={format_value(v)}" for k, v in params.items()]
    if seed is not None:
        parts.append(f"seed={seed}")
    return " ".join(parts)
