"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from shiftlab.config.data import DatasetSpec
from shiftlab.data.formats import FORMATS, DatasetReader, open_dataset_args
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.ray_runtime import end_command_ray


class IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides come after options as well as before them.

    Plain argparse takes the positionals in the first block only and rejects later ones
    (``evaluate CKPT --json evaluate.flip=true``); intermixed parsing collects them all.
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "format", choices=[f for f in FORMATS if f != "procedural"], help="dataset layout"
    )
    parser.add_argument("root", help="dataset root directory")
    parser.add_argument("--split", default="train", help="split name (default: train)")
    parser.add_argument(
        "--condition", help="ACDC condition, or the view/appearance of aligned/shiftlab sets"
    )
    parser.add_argument(
        "--label-space", help="built-in label space name or a YAML file (default: the format's)"
    )
    parser.add_argument("--split-file", help="gta5: a list of image names or GTA5's split.mat")
    parser.add_argument(
        "--unknown-to-ignore",
        action="store_true",
        help="map label values outside the space to ignore",
    )


def add_spec_args(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--data FORMAT ROOT`` and the options of that dataset (``evaluate``, ``predict``)."""
    parser.add_argument(
        "--data",
        nargs=2,
        metavar=("FORMAT", "ROOT"),
        help=f"{purpose} ({', '.join(f for f in FORMATS if f != 'procedural')})",
    )
    parser.add_argument("--split", default="val", help="with --data: split (default: val)")
    parser.add_argument("--condition", help="with --data: ACDC condition or view/appearance")
    parser.add_argument(
        "--label-space", help="with --data: label space (default: the checkpoint's)"
    )
    parser.add_argument("--split-file", help="with --data: gta5 name list or split.mat")
    parser.add_argument(
        "--unknown-to-ignore",
        action="store_true",
        help="with --data: unknown label values -> ignore",
    )
    parser.add_argument(
        "--name", help="with --data: display name (default FORMAT/SPLIT[/CONDITION])"
    )


def spec_from_args(args: argparse.Namespace, default_label_space: str | None) -> DatasetSpec:
    """The dataset of ``--data FORMAT ROOT`` and its options (`add_spec_args`)."""
    fmt, root = args.data
    try:
        return DatasetSpec(
            format=fmt,
            root=root,
            split=args.split,
            condition=args.condition,
            label_space=args.label_space or default_label_space,
            split_file=args.split_file,
            unknown_to_ignore=args.unknown_to_ignore,
            name=args.name,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"--data {fmt} {root}: {exc}") from None


def open_from_args(args: argparse.Namespace) -> DatasetReader:
    return open_dataset_args(
        args.format,
        args.root,
        split=args.split,
        condition=args.condition,
        label_space=args.label_space,
        split_file=args.split_file,
        unknown_to_ignore=args.unknown_to_ignore,
    )


def emit(result: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        json_line(result)
    else:
        print(human)


def json_line(result: Any, default: Callable[[Any], Any] | None = None) -> None:
    """``result`` as one JSON line, the last thing the command prints on stdout."""
    end_command_ray()
    json.dump(result, sys.stdout, default=default)
    sys.stdout.write("\n")
