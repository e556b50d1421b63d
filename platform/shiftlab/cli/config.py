"""`shiftlab config EXPERIMENT [key=value ...]`: the resolved, validated config, as a run would see it.

Like Hydra's ``--cfg job`` or torchtune's ``tune cat``: every default filled in, every
``${VAR}`` expanded, every override applied, then validated. A header says what matters most
for trusting the numbers: the protocol, how the exported model is chosen (and on which sets,
with whose labels) and where the pretrained weights come from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shiftlab.cli.common import IntermixedParser, json_line
from shiftlab.config import load_experiment, resolved_yaml
from shiftlab.config.schema import ExperimentConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print an experiment's resolved, validated config (selection rule and weights included)",
    )
    p.add_argument("experiment", type=Path, help="experiment YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument(
        "--json", action="store_true", help="one JSON object: the config and the summary"
    )
    p.__class__ = IntermixedParser
    p.set_defaults(func=run_config)


def weights_source(cfg: ExperimentConfig) -> str:
    if cfg.train.init_from:
        return f"every weight from the exported model {cfg.train.init_from} (train.init_from)"
    from shiftlab.models.weights import pretrained_weights  # the models stage imports torch

    path = pretrained_weights(getattr(cfg.model, "pretrained", None))
    if path is None:
        return "none: random initialisation, as model.pretrained asks"
    state = (
        "exists"
        if Path(path).expanduser().exists()
        else "MISSING: the run would stop before any work"
    )
    return f"{path} (model.pretrained; {state})"


def summary(cfg: ExperimentConfig) -> dict[str, Any]:
    sets = cfg.selection_sets()
    chosen_on = [s.display_name for s in sets]
    return {
        "protocol": cfg.protocol,
        "selection": cfg.selection.describe(),
        "selection_sets": chosen_on,
        "selection_uses_target_labels": cfg.selection_uses_target_labels(),
        "early_stop": cfg.train.early_stop.model_dump() if cfg.train.early_stop else None,
        "weights": weights_source(cfg),
        "stages": [{"stage": s, "epochs": n} for s, n in cfg.stage_plan()],
        "reported_on": [s.display_name for s in cfg.data.test],
    }


def _header(info: dict[str, Any]) -> str:
    chosen = info["selection"]
    if info["selection_sets"]:
        whose = (
            "target labels: an oracle validation"
            if info["selection_uses_target_labels"]
            else "source labels"
        )
        chosen += f" on {', '.join(info['selection_sets'])} ({whose})"
    stages = ", ".join(f"{s['stage']} {s['epochs']} epoch(s)" for s in info["stages"])
    lines = [
        f"protocol:   {info['protocol'] or 'not declared'}",
        f"best/:      {chosen}",
        f"weights:    {info['weights']}",
        f"stages:     {stages}",
        f"reported:   {', '.join(info['reported_on']) or 'no test sets'}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def run_config(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.experiment, list(args.overrides))
    info = summary(cfg)
    if args.json:
        json_line({"summary": info, "config": cfg.model_dump(mode="json")})
    else:
        sys.stdout.write(_header(info) + resolved_yaml(cfg))
    return 0
