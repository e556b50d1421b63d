"""Run, resume and summarise a sweep: Ray Tune over an experiment, every trial an MLflow child run.

A sweep's run directory (``<output_dir>/<sweep name>/``, a folder or an object-store URI; see
`shiftlab.utils.run_folder`) holds

- ``sweep.json``: the typed `SweepState`, everything a resume needs;
- ``tune/``: Tune's experiment state (``Tuner.restore`` reads it);
- ``trials/t03-<key>/``: each trial's outputs (checkpoints, predictions);
- ``leaderboard.json`` / ``leaderboard.txt``: the final ranking, also logged to the parent run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftlab.config import load_experiment
from shiftlab.config.loader import validate_dict
from shiftlab.config.schema import ExperimentConfig
from shiftlab.generate.cache import ensure_generated
from shiftlab.sweep import leaderboard
from shiftlab.sweep.resources import max_concurrent_trials, trial_need
from shiftlab.sweep.space import (
    SearchSpace,
    apply_params,
    expand_trials,
    load_space,
    ranking_sets,
    trial_name,
    validate_space,
)
from shiftlab.sweep.state import STATE_FILE, Ranking, SweepOptions, SweepState, TrialContext
from shiftlab.sweep.trainable import trial_config
from shiftlab.sweep.tuner import build_tuner
from shiftlab.tracking import RunTracker, default_tracking_uri, ended, runs
from shiftlab.tracking.mlflow_run import (
    absolute_tracking_uri,
    default_artifact_location,
    get_or_create_experiment,
)
from shiftlab.utils.atomic import write_json, write_text
from shiftlab.utils.errors import ConfigError, work_begins
from shiftlab.utils.ray_runtime import connect, forwarded_env
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.store import absolute, join

__all__ = [
    "STATE_FILE",
    "SweepOptions",
    "SweepOutcome",
    "prepare_sweep",
    "resume_sweep",
    "run_sweep",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys whose values change the generated images (trials differing only elsewhere share a set).
_GENERATION_PREFIXES = ("generate.", "data.source.")


@dataclass
class SweepOutcome:
    run_dir: Path  # this node's copy of the sweep's files (the folder itself when not a URI)
    parent_run_id: str
    tracking_uri: str
    board: leaderboard.Leaderboard
    trials: int
    errors: int
    location: str = ""  # the sweep's run directory for everyone: a path or a URI
    state: SweepState | None = None


def _tune_env() -> None:
    # Save Tune's experiment state every second: a driver killed between two saves would
    # otherwise lose trials that already started (and ran) from the resumable state. Only an
    # Optuna sweep's resume reads it (`resume_sweep`); a random search's starts afresh.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Per-epoch reports may carry only training metrics (validate_every > 1).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    # MLflow prints a "View run at ..." line for every run it closes on a server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


# -- preparing -------------------------------------------------------------------------------
def _check_options(options: SweepOptions, space: SearchSpace) -> int:
    if options.scheduler not in ("fifo", "asha"):
        raise ConfigError(f"--scheduler must be asha or fifo, got {options.scheduler!r}")
    if options.search not in ("random", "optuna"):
        raise ConfigError(f"--search must be random or optuna, got {options.search!r}")
    num_samples = options.num_samples or space.num_samples or 1
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    return num_samples


def _check_trials(
    cfg: ExperimentConfig, space: SearchSpace, num_samples: int, options: SweepOptions
) -> list[Any] | None:
    """The trials of a random search, each validated: values valid alone may clash together."""
    if options.search != "random":
        return None
    trials = expand_trials(space, num_samples, cfg.seed)
    base = cfg.model_dump(mode="json")
    for t in trials:
        data = apply_params(base, t.params)
        if t.seed is not None:
            data["seed"] = t.seed
        validate_dict(data, f"{space.path}: trial {trial_name(t.index, t.params, t.seed)}")
    return trials


def _absolute_base(cfg: ExperimentConfig) -> dict[str, Any]:
    """The experiment as trials see it: absolute output paths (trials run in other directories),
    generated sets kept beside the experiment's runs so that later sweeps reuse them."""
    base = cfg.model_dump(mode="json")
    out = absolute(cfg.output_dir)
    base["output_dir"] = out
    if base.get("generate") and not base["generate"].get("output_root"):
        base["generate"]["output_root"] = join(out, "generated")
    return base


def _ranking(cfg: ExperimentConfig, space: SearchSpace) -> Ranking:
    sets = ranking_sets(cfg, space.metric)
    target = any(s.domain_for(cfg.data.source) == "target" for s in sets)
    return Ranking(
        metric=space.metric,
        mode=space.mode,
        sets=[s.display_name for s in sets],
        target_labels=target,
    )


def _mlflow_parent(
    cfg: ExperimentConfig, name: str, options: SweepOptions, ranking: Ranking, location: str
) -> tuple[str, str, str, str]:
    """(tracking URI, experiment name, experiment id, parent run id) of a new sweep."""
    uri = absolute_tracking_uri(
        options.tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri(cfg.output_dir)
    )
    exp_name = cfg.tracking.experiment_name or cfg.name
    client = runs.client_for(uri)
    artifacts = default_artifact_location(cfg.output_dir) if uri.startswith("sqlite:") else None
    exp_id = get_or_create_experiment(client, exp_name, artifacts)
    if "mlflow.experimentKind" not in client.get_experiment(exp_id).tags:
        # The MLflow 3 UI opens such experiments on their runs table (else on GenAI traces).
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    tags = {
        "shiftlab.experiment": cfg.name,
        "shiftlab.search": options.search,
        "shiftlab.scheduler": options.scheduler,
        "shiftlab.run_dir": location,
        "shiftlab.rank_metric": ranking.metric,
        "shiftlab.rank_sets": ",".join(ranking.sets),
        "shiftlab.rank_uses_target_labels": str(ranking.target_labels).lower(),
        "mlflow.note.content": f"Trials ranked by {ranking.describe()}.",
    }
    return uri, exp_name, exp_id, runs.create_parent(client, exp_id, name, tags)


def _log_parent_params(state: SweepState, space: SearchSpace) -> None:
    from mlflow.entities import Param

    params = {f"space.{k}": p.describe() for k, p in space.parameters.items()}
    n_trials = (
        len(state.trials) if state.trials is not None else state.num_samples * len(space.seed_list)
    )
    params.update(
        {
            "sweep.metric": space.metric,
            "sweep.mode": space.mode,
            "sweep.search": state.search,
            "sweep.scheduler": state.scheduler,
            "sweep.num_samples": str(state.num_samples),
            "sweep.seeds": json.dumps(space.seeds),
            "sweep.trials": str(n_trials),
            "sweep.rank_sets": ",".join(state.ranking.sets),
            "experiment": state.experiment_path,
            "shiftlab.space": state.space_path,
        }
    )
    client = runs.client_for(state.tracking_uri)
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(state.parent_run_id, params=items[i : i + 100])
    client.log_text(
        state.parent_run_id, json.dumps(space.raw, indent=2, default=str), "search_space.json"
    )


def prepare_sweep(
    experiment: str | Path, space_path: str | Path, overrides: list[str], options: SweepOptions
) -> SweepState:
    """Validate everything, create the run dir and the MLflow parent run; no Ray yet."""
    _tune_env()
    cfg = load_experiment(experiment, overrides)
    space = load_space(space_path)
    validate_space(space, cfg, str(experiment))
    num_samples = _check_options(options, space)
    name = options.name or f"{cfg.name}-{Path(space_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not _NAME.match(name):
        raise ConfigError(f"sweep name {name!r}: use letters, digits, '_', '.', '-'")
    location = RunFolder(join(absolute(cfg.output_dir), name)).location
    if RunFolder(location).exists(STATE_FILE):
        raise ConfigError(
            f"{location} already holds a sweep: continue it with --resume {location}, or pick --name"
        )
    trials = _check_trials(cfg, space, num_samples, options)
    ranking = _ranking(cfg, space)
    uri, exp_name, exp_id, parent = _mlflow_parent(cfg, name, options, ranking, location)
    state = SweepState(
        name=name,
        location=location,
        experiment_path=str(experiment),
        overrides=list(overrides),
        experiment=_absolute_base(cfg),
        space_path=str(space_path),
        space=space.raw,
        scheduler=options.scheduler,
        search=options.search,
        max_concurrent_cap=options.max_concurrent,
        num_samples=num_samples,
        sweep_seed=cfg.seed,
        epochs=sum(n for _, n in cfg.stage_plan()),
        trials=[t.to_dict() for t in trials] if trials is not None else None,
        ranking=ranking,
        tracking_uri=uri,
        mlflow_experiment=exp_name,
        mlflow_experiment_id=exp_id,
        parent_run_id=parent,
        address=options.address or cfg.ray.address,
        num_cpus=cfg.ray.num_cpus,
    )
    _log_parent_params(state, space)
    state.save()
    return state


# -- running ---------------------------------------------------------------------------------
def _context(state: SweepState) -> TrialContext:
    return TrialContext(state=state, cwd=os.getcwd(), env=forwarded_env())


def _plan_concurrency(ctx: TrialContext) -> int:
    import ray

    total, available = ray.cluster_resources(), ray.available_resources()
    specs = ctx.state.trial_specs()
    # Trials may sweep the worker count: plan for the largest trial.
    cfgs = [trial_config(ctx, s) for s in specs] if specs else [ctx.state.base_config()]
    needs = [trial_need(c, float(total.get("GPU", 0.0))) for c in cfgs]
    need = max(needs, key=lambda n: (n.cpu, n.gpu))
    n = max_concurrent_trials(need, available, ctx.state.max_concurrent_cap, total)
    log.info("each trial needs %s; running up to %d trial(s) at once", need.describe(), n)
    return n


def _pregenerate(ctx: TrialContext) -> None:
    """Generate every distinct image set before trials start, with the whole cluster.

    Inside a trial, generation actors would compete with other trials' trainers for CPUs.
    Sets that depend on continuously sampled values (a searcher's suggestions) cannot be
    listed up front; those trials generate their own (``ensure_generated`` is lock-protected).
    """
    state = ctx.state
    base = state.base_config()
    if base.generate is None:
        return
    specs = state.trial_specs()
    if specs is None and any(
        k.startswith(_GENERATION_PREFIXES) for k in state.search_space().parameters
    ):
        return
    cfgs = [trial_config(ctx, s) for s in specs] if specs is not None else [base]
    seen: set[str] = set()
    for cfg in cfgs:
        assert cfg.generate is not None
        ident = json.dumps(
            [cfg.generate.model_dump(mode="json"), cfg.data.source.model_dump(mode="json")],
            sort_keys=True,
        )
        if ident not in seen:
            seen.add(ident)
            t0 = time.perf_counter()
            log.info(
                "generated set ready: %s (%.1f s)", ensure_generated(cfg), time.perf_counter() - t0
            )


def execute(state: SweepState, restore: bool = False) -> SweepOutcome:
    """Start (or continue) the Tune run of a prepared sweep and summarise it."""
    _tune_env()
    ctx = _context(state)
    connect(state.address, state.num_cpus, log_to_driver=False)
    parent = RunTracker(state.tracking_uri, state.parent_run_id).reopen()
    with ended(parent):
        work_begins()
        if not restore:
            state.max_concurrent = _plan_concurrency(ctx)
            state.save("running")
            _pregenerate(ctx)
        results = build_tuner(ctx, restore).fit()
        errors = sum(1 for r in results if r.error is not None)
        outcome = finalize(state, len(results), errors)
        parent.end("FINISHED" if errors < max(len(results), 1) else "FAILED")
    state.save("finished")
    return outcome


def finalize(state: SweepState, results_count: int, errors: int) -> SweepOutcome:
    """Close stray runs, rank configurations, log mean ± std and the leaderboard to the parent."""
    client = runs.client_for(state.tracking_uri)
    exp_id, parent = state.mlflow_experiment_id, state.parent_run_id
    for run in runs.children(client, exp_id, parent):
        # Workers of a stopped trial may have touched the run after the driver closed it.
        if run.info.status == "RUNNING":
            runs.close_run(client, run.info.run_id, "FINISHED", early_stopped=True)
    board = leaderboard.build(
        client, exp_id, parent, state.name, state.ranking.metric, state.ranking.mode
    )
    board.ranking = state.ranking.describe()
    _log_board(client, parent, board)
    folder = state.folder
    write_json(folder.path("leaderboard.json"), board.to_dict())
    write_text(folder.path("leaderboard.txt"), board.render() + "\n")
    for name in ("leaderboard.json", "leaderboard.txt"):
        folder.publish(name)
    return SweepOutcome(
        folder.path(),
        parent,
        state.tracking_uri,
        board,
        results_count,
        errors,
        folder.location,
        state,
    )


def _log_board(client: Any, parent: str, board: leaderboard.Leaderboard) -> None:

    now = int(time.time() * 1000)
    metrics = []
    for rank, row in enumerate(board.rows, 1):
        mean, std = row.stats()
        if mean is None:
            continue
        metrics += _mean_std_metrics(f"{row.config_id}.{board.metric}", mean, std, now)
        if rank == 1:
            for m in [board.metric, *board.extra_metrics]:
                em, es = row.stats("" if m == board.metric else m)
                if em is not None:
                    metrics += _mean_std_metrics(f"best.{m}", em, es, now)
    for i in range(0, len(metrics), 1000):
        client.log_batch(parent, metrics=metrics[i : i + 1000])
    if board.best is not None:
        client.set_tag(parent, "shiftlab.best_config", board.best.config_id)
        best_params = {k: board.best.params.get(k) for k in board.differing}
        client.set_tag(parent, "shiftlab.best_params", json.dumps(best_params, default=str))
    client.log_text(parent, json.dumps(board.to_dict(), indent=2, default=str), "leaderboard.json")
    client.log_text(parent, board.render() + "\n", "leaderboard.txt")


def _mean_std_metrics(key: str, mean: float, std: float | None, now: int) -> list[Any]:
    """``<key>_mean`` and, where there is more than one seed, ``<key>_std``."""
    from mlflow.entities import Metric

    out = [Metric(f"{key}_mean", mean, now, 0)]
    if std is not None:
        out.append(Metric(f"{key}_std", std, now, 0))
    return out


def run_sweep(
    experiment: str | Path,
    space_path: str | Path,
    overrides: list[str] | None = None,
    options: SweepOptions | None = None,
) -> SweepOutcome:
    state = prepare_sweep(experiment, space_path, list(overrides or []), options or SweepOptions())
    return execute(state)


def resume_sweep(location: str | Path, address: str | None = None) -> SweepOutcome:
    """Continue an interrupted sweep: finished trials stay, unfinished ones run (into the same runs)."""
    from ray import tune

    state = SweepState.load(location)
    if address:
        state.address = address
    tune_dir = join(state.location, "tune")
    # Trials expanded up front (random search) start afresh: each finds its MLflow run (a
    # finished one reports its stored results, an unfinished one continues from its Ray Train
    # checkpoints), so Tune's saved state is not needed, and it can be inconsistent: a driver
    # killed while Tune uploads it may leave the searcher's file newer than the trial list
    # (a trial the searcher counts as live that no trial list holds: the resume then waits
    # for it forever). A searcher's suggestions (Optuna) exist only in Tune's state.
    # Killed before Tune saved anything: start the Tune part afresh (runs are get-or-create).
    restore = (
        state.trials is None
        and state.max_concurrent is not None
        and tune.Tuner.can_restore(tune_dir)
    )
    return execute(state, restore=restore)
