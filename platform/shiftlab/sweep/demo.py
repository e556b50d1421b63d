"""`shiftlab demo`: the whole platform on a laptop in minutes, with nothing to download.

Procedural noon street scenes -> photometric night edits (generate) -> SDGPA training on Ray
Train inside a Ray Tune sweep of editor strength x ZoDi weight (4 trials, two generated sets
shared by two trials each) -> validation/test on rendered night scenes -> the leaderboard,
with every trial a nested MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path

from shiftlab.sweep.driver import SweepOptions, SweepOutcome, run_sweep
from shiftlab.utils.atomic import write_text

# The demo experiment (experiments/demo.yaml, sized so that two trials train side by side on
# two CPU cores: 0.99 CPU per trial worker + 0.01 per trial driver, one torch thread each).
DEMO_EXPERIMENT = """\
name: demo
description: SDGPA (photometric night editor) on procedural noon -> night, tiny sizes for a laptop
seed: 0
data:
  source: {format: procedural, split: train, condition: noon, layouts: 24, size: [96, 192]}
  val:
    - {name: night_val, format: procedural, split: val, condition: night, layouts: 24, size: [96, 192]}
  test:
    - {name: night_test, format: procedural, split: test, condition: night, layouts: 24, size: [96, 192]}
generate:
  preset: night
  editor: {kind: photometric}
  resize: null
  tile: 96
model: {name: deeplabv3plus, backbone: resnet18, output_stride: 16, decoder_channels: 64, pretrained: none}
method: {name: sdgpa, stage1_epochs: 2, stage2_epochs: 2}
optim: {optimizer: adamw, lr: 1.0e-3, weight_decay: 1.0e-4, schedule: poly, min_lr: 1.0e-6}
train:
  batch_size: 4
  num_workers: 1
  cpus_per_worker: 0.99
  torch_threads: 1
  augment: {crop: [96, 96]}
evaluate: {overlays: 2}
"""

# Editor strength changes the generated images (2 sets); the ZoDi weight only the training.
DEMO_SPACE = """\
metric: val_miou
mode: max
parameters:
  generate.editor.strength: {grid: [0.6, 1.0]}
  method.zodi_weight: {grid: [0.0, 0.1]}
"""


def run_demo(
    out: str | Path,
    tracking_uri: str | None = None,
    overrides: list[str] | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
) -> tuple[SweepOutcome, float]:
    """Run the demo sweep into ``out``; returns the outcome and the wall time in seconds."""
    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    experiment, space = out / "demo_experiment.yaml", out / "demo_space.yaml"
    write_text(experiment, DEMO_EXPERIMENT)
    write_text(space, DEMO_SPACE)
    options = SweepOptions(
        name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        tracking_uri=tracking_uri,
        max_concurrent=max_concurrent,
        address=address,
    )
    outcome = run_sweep(experiment, space, [f"output_dir={out}", *(overrides or [])], options)
    return outcome, time.perf_counter() - t0


def ui_instructions(outcome: SweepOutcome, experiment_id: str | None = None) -> str:
    uri = outcome.tracking_uri
    where = f"#/experiments/{experiment_id}/runs" if experiment_id else ""
    if uri.startswith("sqlite:"):
        start = f"  mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        url = f"http://127.0.0.1:5000/{where}"
        lines = ["Open the runs in the MLflow UI:", start, f"  then browse to {url}"]
    else:
        lines = ["Open the runs in the MLflow UI:", f"  {uri.rstrip('/')}/{where}"]
    lines.append(
        f"The sweep is the parent run {outcome.run_dir.name!r}: expand it (+) to see its trials, "
        "tick them and press Compare for their curves and parameters."
    )
    return "\n".join(lines)
