"""The Ray Tune ``Tuner`` of a sweep: search algorithm, scheduler, resources, run config."""

from __future__ import annotations

import logging
from typing import Any

from shiftlab.sweep.callback import SweepProgress, TrialRunCloser, name_trial
from shiftlab.sweep.resources import DRIVER_CPU
from shiftlab.sweep.state import TrialContext
from shiftlab.sweep.trainable import run_trial
from shiftlab.utils.store import join


def _scheduler(ctx: TrialContext) -> Any:
    if ctx.state.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # One iteration per reported epoch plus the trial's final report. ASHA stops every trial
    # that reaches max_t, so the default leaves room for all of them.
    asha: dict[str, Any] = {
        "max_t": 4 * ctx.state.epochs + 4,
        "grace_period": 1,
        "reduction_factor": 2,
    }
    asha.update(ctx.state.search_space().asha)
    return ASHAScheduler(time_attr="training_iteration", **asha)


def _search(ctx: TrialContext) -> tuple[Any, dict[str, Any], int]:
    """(search algorithm, Tune param_space, num_samples)."""
    from ray import tune

    state = ctx.state
    if state.search != "optuna":
        # Random search: trials expanded up front (deterministic; a resume sees the same ones).
        return None, {"trial": tune.grid_search(state.trials or [])}, 1
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    space = state.search_space()
    param_space = {
        "params": {k: p.tune_domain(for_optuna=True) for k, p in space.parameters.items()}
    }
    search_alg: Any = OptunaSearch(seed=state.sweep_seed % (2**32))
    seeds = space.seeds or []
    if len(seeds) > 1:
        search_alg = Repeater(search_alg, repeat=len(seeds), set_index=True)
    return search_alg, param_space, state.num_samples * max(1, len(seeds))


def build_tuner(ctx: TrialContext, restore: bool) -> Any:
    from ray import tune

    state = ctx.state
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": DRIVER_CPU})
    if restore:
        return tune.Tuner.restore(
            join(state.location, "tune"),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
        )
    search_alg, param_space, num_samples = _search(ctx)
    tune_config = tune.TuneConfig(
        metric=state.ranking.metric,
        mode=state.ranking.mode,
        scheduler=_scheduler(ctx),
        search_alg=search_alg,
        num_samples=num_samples,
        max_concurrent_trials=state.max_concurrent,
        trial_name_creator=name_trial,
        trial_dirname_creator=name_trial,
        # A trial that ran to its end leaves a process with torch, timm and MLflow imported
        # (~5 s); the next trial starts in it (same results, a 4-trial demo 95 -> 85 s).
        # Not under ASHA: a stopped trial's thread is still inside its trainer's fit(), so
        # Tune's reset would time out and fail the trial that was to reuse it.
        reuse_actors=state.scheduler != "asha",
    )
    run_config = tune.RunConfig(
        name="tune",
        storage_path=state.location,
        callbacks=[
            TrialRunCloser(state.tracking_uri, state.mlflow_experiment_id, state.parent_run_id),
            SweepProgress(state.ranking.metric, state.ranking.mode),
        ],
        failure_config=tune.FailureConfig(max_failures=0),
        # SweepProgress says what matters; with -v (debug logging) Tune's tables come too
        verbose=1 if logging.getLogger("shiftlab").isEnabledFor(logging.DEBUG) else 0,
    )
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )
