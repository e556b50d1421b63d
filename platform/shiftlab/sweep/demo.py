"""`shiftlab demo`: the whole platform on a laptop in minutes, with nothing to download.

It runs the shipped files, sized for the machine by overrides only:

1. ``experiments/demo_source_only.yaml``: the source-only reference (procedural noon scenes),
   chosen on noon val, scored on noon val and the night test split;
2. ``experiments/demo.yaml`` swept over ``search_spaces/demo.yaml``: photometric night edits
   (generate) -> SDGPA fine-tuning from the reference's weights, one Ray Tune trial per
   (editor strength, ZoDi weight), two generated sets shared by two trials each;
3. the table: every configuration's night test mIoU next to the reference's.

The reference and the trials are nested MLflow runs under the sweep's parent run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftlab.config import load_experiment
from shiftlab.sweep.driver import SweepOptions, SweepOutcome, execute, prepare_sweep
from shiftlab.sweep.state import SweepState
from shiftlab.tracking import RunTracker, ended, runs
from shiftlab.train.experiment import run_experiment
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.ray_runtime import connect

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO / "experiments" / "demo_source_only.yaml"
EXPERIMENT = REPO / "experiments" / "demo.yaml"
SPACE = REPO / "search_spaces" / "demo.yaml"
SOURCE_SET, TARGET_SET = "noon_val", "night_test"


@dataclass
class DemoOutcome:
    sweep: SweepOutcome
    reference: dict[str, Any]  # the source-only run's summary
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        ref = self.reference
        return {
            "wall_s": round(self.seconds, 1),
            "reference": {
                "method": "source_only",
                "noon_miou": ref.get(f"val/{SOURCE_SET}/miou"),
                "night_miou": ref.get(f"test/{TARGET_SET}/miou"),
                "best_epoch": ref.get("best_epoch"),
                "run_dir": ref.get("run_dir"),
            },
            "ranking": self.sweep.state.ranking.describe() if self.sweep.state else "",
            "rows": self.rows,
            "sweep_dir": self.sweep.location,
            "tracking_uri": self.sweep.tracking_uri,
        }


def _laptop_sizing(cpus: float) -> tuple[list[str], list[str]]:
    """Overrides that fit the machine: the reference trains alone on every CPU; trials train
    side by side, one CPU (one torch thread) each."""
    whole = max(1, math.floor(cpus))
    reference = [f"train.cpus_per_worker={whole}", f"train.torch_threads={whole}"]
    trial = ["train.cpus_per_worker=0.99", "train.torch_threads=1"]
    return reference, trial


def _check_files() -> None:
    missing = [str(p) for p in (REFERENCE, EXPERIMENT, SPACE) if not p.is_file()]
    if missing:
        raise ConfigError(
            f"the demo runs the checkout's files, missing here: {missing} (run from a git checkout)"
        )


def _reference_run(state: SweepState, overrides: list[str]) -> dict[str, Any]:
    """The source-only reference as a nested run of the demo's parent run."""
    cfg = load_experiment(REFERENCE, overrides)
    client = runs.client_for(state.tracking_uri)
    tags = {runs.TAG_SWEEP: state.name, runs.TAG_KIND: "reference"}
    run_id = runs.get_or_create_child(
        client,
        state.mlflow_experiment_id,
        state.parent_run_id,
        "reference",
        "reference source_only",
        tags,
    )
    tracker = RunTracker(state.tracking_uri, run_id)
    with ended(tracker):
        return run_experiment(cfg, tracker=tracker)


def _rows(outcome: SweepOutcome) -> list[dict[str, Any]]:
    metric = f"test/{TARGET_SET}/miou"
    rows = []
    for row in outcome.board.rows:
        mean, std = row.stats(metric)
        values = row.values(metric)
        rows.append(
            {
                "config": row.config_id,
                "params": {k: row.params.get(k) for k in outcome.board.differing},
                "night_miou": mean,
                "night_miou_std": std if len(values) > 1 else None,
                "n": len(values),
            }
        )
    return rows


def run_demo(
    out: str | Path,
    tracking_uri: str | None = None,
    overrides: list[str] | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
) -> DemoOutcome:
    """Run the demo into ``out``: the reference, then the sweep; returns both and the wall time."""
    import ray

    t0 = time.perf_counter()
    _check_files()
    out = Path(out).resolve()
    connect(address, log_to_driver=False)
    ref_sizing, trial_sizing = _laptop_sizing(ray.available_resources().get("CPU", 1.0))
    common = [f"output_dir={out}", *(overrides or [])]
    options = SweepOptions(
        name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        tracking_uri=tracking_uri,
        max_concurrent=max_concurrent,
        address=address,
    )
    reference_best = out / "demo_source_only" / "best"
    state = prepare_sweep(
        EXPERIMENT, SPACE, [*common, *trial_sizing, f"train.init_from={reference_best}"], options
    )
    # The sweep's parent run owns the demo: it ends FAILED (or KILLED) if the reference does.
    with ended(RunTracker(state.tracking_uri, state.parent_run_id)):
        reference = _reference_run(state, [*common, *ref_sizing])
        outcome = execute(state)
    result = DemoOutcome(outcome, reference, time.perf_counter() - t0)
    result.rows = _rows(outcome)
    return result


def render_table(result: DemoOutcome) -> str:
    ref = result.to_dict()["reference"]
    lines = [
        f"source-only reference (no adaptation): noon val mIoU {_pct(ref['noon_miou'])}, "
        f"night test mIoU {_pct(ref['night_miou'])}",
        "",
        f"{'config':<8} {'params':<46} {'night test mIoU':>16} {'vs reference':>13}  n",
    ]
    for row in result.rows:
        params = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in row["params"].items())
        delta = (
            None
            if row["night_miou"] is None or ref["night_miou"] is None
            else row["night_miou"] - ref["night_miou"]
        )
        spread = f" ± {_pct(row['night_miou_std'])}" if row["night_miou_std"] is not None else ""
        lines.append(
            f"{row['config']:<8} {params:<46} {_pct(row['night_miou']) + spread:>16} "
            f"{'' if delta is None else f'{delta * 100:+.1f} pts':>13}  {row['n']}"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def ui_instructions(outcome: SweepOutcome) -> str:
    uri = outcome.tracking_uri
    experiment_id = outcome.state.mlflow_experiment_id if outcome.state else None
    where = f"#/experiments/{experiment_id}/runs" if experiment_id else ""
    if uri.startswith("sqlite:"):
        start = f"  mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        url = f"http://127.0.0.1:5000/{where}"
        lines = ["Open the runs in the MLflow UI:", start, f"  then browse to {url}"]
    else:
        lines = ["Open the runs in the MLflow UI:", f"  {uri.rstrip('/')}/{where}"]
    lines.append(
        f"The sweep is the parent run {outcome.run_dir.name!r}: expand it (+) to see the reference "
        "and the trials, tick them and press Compare for their curves and parameters."
    )
    return "\n".join(lines)
