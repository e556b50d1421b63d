"""`shiftlab generate EXPERIMENT [key=value ...]`: write (or reuse) the experiment's generated set.

Prints the dataset directory. Runs the same under ``ray job submit -- shiftlab generate ...``:
the job's ``RAY_ADDRESS`` makes it join the cluster instead of starting a local Ray.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shiftlab.cli.common import emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate target-style images with the experiment's editor (cached, resumable)",
    )
    p.add_argument("experiment", type=Path, help="experiment YAML file")
    p.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cache-dir", help="cache of procedural scenes (default: SHIFTLAB_CACHE_DIR)")
    p.add_argument(
        "--modes", help="comma-separated modes to generate (default: the config's generate.modes)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from shiftlab.config import load_experiment
    from shiftlab.generate.cache import ensure_generated_report
    from shiftlab.utils.errors import ConfigError

    cfg = load_experiment(args.experiment, args.overrides)
    if cfg.generate is None:
        raise ConfigError(f"{args.experiment}: generate: the experiment has no 'generate' section")
    modes = None
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = sorted(set(modes) - {"intermediate", "target"})
        if unknown:
            raise ConfigError(f"--modes: unknown mode(s) {unknown}; modes: intermediate, target")
    args.on_interrupt = (
        "every image written so far is kept; run the same command again to finish the set"
    )
    result = ensure_generated_report(
        cfg, args.cache_dir, address=args.address or cfg.ray.address, modes=modes
    )
    summary = {
        "path": str(result.path),
        "cache_key": result.key,
        "generated": result.generated,
        "stale": result.stale,
        "modes": list(result.modes),
    }
    if result.stale:
        print(
            f"shiftlab: {result.stale} source sample(s) changed since the set was made: "
            f"their {result.generated} image(s) were generated again",
            file=sys.stderr,
        )
    emit(summary, args.json, str(result.path))
    return 0
