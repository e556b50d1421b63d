"""`shiftlab demo`, shrunk by overrides: 4 trials nested under one parent run in a fresh store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shiftlab.tracking import runs

pytestmark = pytest.mark.slow


def test_demo_sweeps_four_trials_under_one_parent_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    overrides = [
        "data.source.layouts=4", "data.val.0.layouts=4", "data.test.0.layouts=4",
        "method.stage1_epochs=1", "method.stage2_epochs=1", "train.batch_size=2", "evaluate.overlays=0",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "shiftlab", "demo", "--out", str(out), *overrides],
        capture_output=True, text=True, cwd=tmp_path, timeout=1200,
        env=dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="1"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = runs.client_for(uri)
    all_runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parents = [r for r in all_runs if runs.PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in all_runs if r.data.tags.get(runs.PARENT_TAG) == parent.info.run_id]
    assert len(children) == len(all_runs) - 1 >= 4  # every trial run is nested under the parent
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    swept = {json.dumps(json.loads(r.data.tags[runs.TAG_PARAMS]), sort_keys=True) for r in children}
    assert len(swept) == 4
    for child in children:
        assert child.data.params["generate.editor.strength"] in ("0.6", "1.0")
        assert "final/test_miou" in child.data.metrics and "val_miou" in child.data.metrics
    # two editor strengths -> two generated sets, shared by the trials
    generated = [p for p in (out / "generated").iterdir() if p.is_dir()]
    assert len(generated) == 2
    # the parent carries the comparison
    assert "best.val_miou_mean" in parent.data.metrics
    assert "strength" in done.stdout and "zodi_weight" in done.stdout
    assert f"mlflow server --backend-store-uri {uri}" in done.stdout
