"""The Tune function that runs one trial: apply its parameters, then generate -> train -> evaluate.

Ray 2.60 (Train V2) cannot tune a ``TorchTrainer`` directly; a function trainable builds and
fits the trainer itself, and ``TuneReportCallback`` forwards rank 0's per-epoch reports to
Tune (so ASHA sees them). The trial's MLflow child run is found (or created) by its trial key
before training, handed to the training stage, and closed here when training ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from shiftlab.config.loader import validate_dict
from shiftlab.sweep import runs
from shiftlab.sweep.space import TrialSpec, apply_params, trial_name
from shiftlab.utils.store import join

log = logging.getLogger(__name__)

# Marks the last report of a trial that ran to the end (a trial without it was stopped early).
COMPLETED = "shiftlab_completed"
# What a trial runs: ``module:function`` with run_experiment's signature.
DEFAULT_RUNNER = "shiftlab.runner:run_experiment"


def _resolve(target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def trial_spec(config: dict[str, Any], trial_index: int | None, ctx: dict[str, Any]) -> TrialSpec:
    """The trial's parameters from Tune's config (pre-expanded or suggested by a searcher)."""
    if "trial" in config:  # random search: expanded up front, deterministic
        return TrialSpec.from_dict(config["trial"])
    params = {k: _plain(v) for k, v in config.get("params", {}).items()}
    seeds = ctx.get("seeds")
    seed = None
    if seeds:
        seed = seeds[int(config.get("__trial_index__", 0)) % len(seeds)]
    digest = hashlib.sha1(runs.params_json(params).encode()).hexdigest()[:8]
    return TrialSpec(trial_index if trial_index is not None else -1, f"o{digest}", params, seed)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def trial_config(ctx: dict[str, Any], spec: TrialSpec) -> Any:
    """The validated experiment config of one trial; its outputs go under the sweep's run dir."""
    data = apply_params(ctx["base"], spec.params)
    if spec.seed is not None:
        data["seed"] = spec.seed
    data["name"] = f"t{spec.index:02d}-{spec.key}"
    data["output_dir"] = join(ctx["sweep_dir"], "trials")
    tracking = dict(data.get("tracking") or {})
    tracking.update(
        enabled=True,
        tracking_uri=ctx["tracking_uri"],
        experiment_name=ctx["experiment_name"],
    )
    data["tracking"] = tracking
    return validate_dict(data, f"sweep {ctx['sweep_name']} trial {trial_name(spec.index, spec.params, spec.seed)}")


def _numeric(result: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(result, dict):
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[str(key)] = float(value)
    return out


def trial_index_from_name(name: str | None) -> int | None:
    if name and name.startswith("t") and name[1:3].isdigit():
        digits = name[1:].split("_", 1)[0].split("-", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def run_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The Tune trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray workers on a running cluster do not inherit the driver's environment.
    for key, value in ctx.get("env", {}).items():
        os.environ[key] = value
    # Tune starts trials in their own folders; relative paths in the config mean the sweep's.
    if ctx.get("cwd") and Path(ctx["cwd"]).is_dir():
        os.chdir(ctx["cwd"])
    run_experiment = _resolve(ctx.get("runner", DEFAULT_RUNNER))
    context = tune.get_context()
    spec = trial_spec(config, trial_index_from_name(context.get_trial_name()), ctx)
    key = spec.key if "trial" in config else context.get_trial_id()
    cfg = trial_config(ctx, spec)

    client = runs.client_for(ctx["tracking_uri"])
    final = runs.finished_results(runs.find_child(client, ctx["experiment_id"], ctx["parent_run_id"], key))
    if final is not None:
        # Finished before the driver died but after Tune last saved its state: report the
        # stored results instead of training again (a resumed sweep never re-runs a trial).
        # Checked before get_or_create_child, which reopens the runs it finds.
        log.info("trial %s already finished in MLflow: not re-run", key)
        tune.report({**final, COMPLETED: 1.0, "trial_key": key})
        return
    run_id = runs.get_or_create_child(
        client,
        ctx["experiment_id"],
        ctx["parent_run_id"],
        key,
        trial_name(spec.index, spec.params, spec.seed),
        {
            runs.TAG_SWEEP: ctx["sweep_name"],
            runs.TAG_KIND: "trial",
            runs.TAG_INDEX: str(spec.index),
            runs.TAG_CONFIG: spec.config_id,
            runs.TAG_PARAMS: runs.params_json(spec.params),
            runs.TAG_SEED: str(cfg.seed),
            runs.TAG_TUNE_ID: context.get_trial_id(),
        },
    )
    log.info("trial %s (%s): MLflow run %s", key, cfg.name, run_id)
    try:
        result = run_experiment(cfg, mlflow_run_id=run_id, callbacks=[TuneReportCallback()])
    except BaseException:
        runs.close_run(client, run_id, "FAILED", early_stopped=False)
        raise
    final = _numeric(result)
    # Close the run before the last report: once Tune has it, the trial may be torn down.
    runs.close_run(client, run_id, "FINISHED", early_stopped=False)
    tune.report({**final, COMPLETED: 1.0, "trial_key": key})
