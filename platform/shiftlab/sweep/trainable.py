"""The Tune function that runs one trial: apply its parameters, then generate -> train -> evaluate.

Ray 2.60 (Train V2) cannot tune a ``TorchTrainer`` directly; a function trainable builds and
fits the trainer itself, and ``TuneReportCallback`` forwards rank 0's per-epoch reports to
Tune (so ASHA sees them). The trial's MLflow child run is found (or created) by its trial key,
owned here for the trial's whole life, and ended before the trial's last report.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from shiftlab.config.loader import validate_dict
from shiftlab.config.schema import ExperimentConfig
from shiftlab.sweep.space import TrialSpec, apply_params, trial_name
from shiftlab.sweep.state import TrialContext
from shiftlab.tracking import RunTracker, ended, runs
from shiftlab.train.experiment import run_experiment
from shiftlab.utils.store import join

log = logging.getLogger(__name__)

# Marks the last report of a trial that ran to the end (a trial without it was stopped early).
COMPLETED = "shiftlab_completed"


def trial_spec(config: dict[str, Any], trial_index: int | None, ctx: TrialContext) -> TrialSpec:
    """The trial's parameters from Tune's config (pre-expanded or suggested by a searcher)."""
    if "trial" in config:  # random search: expanded up front, deterministic
        return TrialSpec.from_dict(config["trial"])
    params = {k: _plain(v) for k, v in config.get("params", {}).items()}
    seeds = ctx.state.space.get("seeds")
    seed = None
    if seeds:
        seed = seeds[int(config.get("__trial_index__", 0)) % len(seeds)]
    digest = hashlib.sha1(runs.params_json(params).encode()).hexdigest()[:8]
    return TrialSpec(trial_index if trial_index is not None else -1, f"o{digest}", params, seed)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def trial_config(ctx: TrialContext, spec: TrialSpec) -> ExperimentConfig:
    """The validated experiment config of one trial; its outputs go under the sweep's run dir."""
    state = ctx.state
    data = apply_params(state.experiment, spec.params)
    if spec.seed is not None:
        data["seed"] = spec.seed
    data["name"] = f"t{spec.index:02d}-{spec.key}"
    data["output_dir"] = join(state.location, "trials")
    tracking = dict(data.get("tracking") or {})
    tracking.update(
        enabled=True, tracking_uri=state.tracking_uri, experiment_name=state.mlflow_experiment
    )
    data["tracking"] = tracking
    return validate_dict(
        data, f"sweep {state.name} trial {trial_name(spec.index, spec.params, spec.seed)}"
    )


def _numeric(result: dict[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def trial_index_from_name(name: str | None) -> int | None:
    if name and name.startswith("t") and name[1:3].isdigit():
        digits = name[1:].split("_", 1)[0].split("-", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray workers on a running cluster do not inherit the driver's environment.
    os.environ.update(ctx.env)
    # Tune starts trials in their own folders; relative paths in the config mean the sweep's.
    if Path(ctx.cwd).is_dir():
        os.chdir(ctx.cwd)
    context = tune.get_context()
    spec = trial_spec(config, trial_index_from_name(context.get_trial_name()), ctx)
    key = spec.key if "trial" in config else context.get_trial_id()
    cfg = trial_config(ctx, spec)
    state = ctx.state
    client = runs.client_for(state.tracking_uri)
    final = runs.finished_results(
        runs.find_child(client, state.mlflow_experiment_id, state.parent_run_id, key)
    )
    if final is not None:
        # Finished before the driver died but after Tune last saved its state: report the
        # stored results instead of training again (a resumed sweep never re-runs a trial).
        # Checked before get_or_create_child, which reopens the runs it finds.
        log.info("trial %s already finished in MLflow: not re-run", key)
        tune.report({**final, COMPLETED: 1.0, "trial_key": key})
        return
    tracker = RunTracker(
        state.tracking_uri, _child_run(client, ctx, spec, key, cfg, context.get_trial_id())
    )
    log.info("trial %s (%s): MLflow run %s", key, cfg.name, tracker.run_id)
    # The run ends before the last report: once Tune has that, the trial may be torn down.
    with ended(tracker):
        result = run_experiment(cfg, tracker=tracker, callbacks=[TuneReportCallback()])
    tune.report({**_numeric(result), COMPLETED: 1.0, "trial_key": key})


def _child_run(
    client: Any, ctx: TrialContext, spec: TrialSpec, key: str, cfg: ExperimentConfig, tune_id: str
) -> str:
    state = ctx.state
    tags = {
        runs.TAG_SWEEP: state.name,
        runs.TAG_KIND: "trial",
        runs.TAG_INDEX: str(spec.index),
        runs.TAG_CONFIG: spec.config_id,
        runs.TAG_PARAMS: runs.params_json(spec.params),
        runs.TAG_SEED: str(cfg.seed),
        runs.TAG_TUNE_ID: tune_id,
    }
    name = trial_name(spec.index, spec.params, spec.seed)
    return runs.get_or_create_child(
        client, state.mlflow_experiment_id, state.parent_run_id, key, name, tags
    )
