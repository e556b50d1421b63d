"""`shiftlab demo`, shrunk by overrides: a reference and 4 trials nested under one parent run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shiftlab.tracking import runs

pytestmark = pytest.mark.slow

# Fewer scenes and steps; everything else (files, sweep, generation, MLflow) is the real demo.
SMALL = [
    "data.source.layouts=16",
    "model.backbone=test_resnet",  # timm's 0.4M-parameter ResNet: checkpoints of MBs
    "data.source.val_layouts=4",
    "data.source.test_layouts=4",
    "train.epochs=2",
    "train.iters_per_epoch=3",
    "evaluate.overlays=0",
]


def test_demo_runs_a_reference_and_four_trials_under_one_parent_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "shiftlab", "demo", "--out", str(out), "--json", *SMALL],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1200,
        env=dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="1"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = runs.client_for(uri)
    all_runs = [
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    ]
    parents = [r for r in all_runs if runs.PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in all_runs if r.data.tags.get(runs.PARENT_TAG) == parent.info.run_id]
    assert len(children) == len(all_runs) - 1  # every run is nested under the parent
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    trials = [r for r in children if r.data.tags[runs.TAG_KIND] == "trial"]
    reference = [r for r in children if r.data.tags[runs.TAG_KIND] == "reference"]
    assert len(trials) == 4 and len(reference) == 1
    assert reference[0].data.params["method.name"] == "source_only"
    swept = {json.dumps(json.loads(r.data.tags[runs.TAG_PARAMS]), sort_keys=True) for r in trials}
    assert len(swept) == 4
    for child in trials:
        assert child.data.params["generate.editor.strength"] in ("0.6", "1.0")
        assert child.data.params["train.init_from"].endswith("demo_source_only/best")  # fine-tuned
        assert "final/test_miou" in child.data.metrics and "val_miou" in child.data.metrics
    # two editor strengths -> two generated sets, shared by the trials
    generated = [p for p in (out / "generated").iterdir() if p.is_dir()]
    assert len(generated) == 2
    # the parent carries the comparison and names what it ranks on
    assert "best.val_miou_mean" in parent.data.metrics
    assert parent.data.tags["shiftlab.rank_sets"] == "night_val"
    assert parent.data.tags["shiftlab.rank_uses_target_labels"] == "true"
    assert "strength" in done.stdout and "zodi_weight" in done.stdout
    assert "carries target labels" in done.stdout and "source-only reference" in done.stdout
    assert f"mlflow server --backend-store-uri {uri}" in done.stdout
    # the last line: one JSON object with the reference and every configuration's night mIoU
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["reference"]["method"] == "source_only"
    assert (
        0.0 <= result["reference"]["noon_miou"] <= 1.0
        and 0.0 <= result["reference"]["night_miou"] <= 1.0
    )
    assert len(result["rows"]) == 4 and all(
        r["n"] == 1 and r["night_miou_std"] is None for r in result["rows"]
    )
    assert result["wall_s"] > 0
