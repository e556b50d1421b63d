"""Run, resume and summarise a sweep: Ray Tune over an experiment, every trial an MLflow child run.

A sweep's run directory (``<output_dir>/<sweep name>/``, a folder or an object-store URI; see
`shiftlab.utils.run_folder`) holds

- ``sweep.json``: everything a resume needs (the resolved experiment, the space, the options,
  the MLflow store, experiment and parent run id);
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
from shiftlab.sweep import leaderboard, runs
from shiftlab.sweep.resources import DRIVER_CPU, max_concurrent_trials, trial_need
from shiftlab.sweep.space import (
    SearchSpace,
    apply_params,
    expand_trials,
    load_space,
    parse_space,
    trial_name,
    validate_space,
)
from shiftlab.utils.atomic import write_json, write_text
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.store import absolute, join

log = logging.getLogger(__name__)

STATE_FILE = "sweep.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys whose values change the generated images (trials differing only elsewhere share a set).
_GENERATION_PREFIXES = ("generate.", "data.source.")


@dataclass
class SweepOptions:
    num_samples: int | None = None
    scheduler: str = "fifo"  # fifo | asha
    search: str = "random"  # random | optuna
    max_concurrent: int | None = None
    name: str | None = None
    tracking_uri: str | None = None
    address: str | None = None


@dataclass
class SweepOutcome:
    run_dir: Path  # this node's copy of the sweep's files (the folder itself when not a URI)
    parent_run_id: str
    tracking_uri: str
    board: leaderboard.Leaderboard
    trials: int
    errors: int
    location: str = ""  # the sweep's run directory for everyone: a path or a URI


def _tune_env() -> None:
    # Save Tune's experiment state every second: a driver killed between two saves would
    # otherwise lose trials that already started (and ran) from the resumable state.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Per-epoch reports may carry only training metrics (validate_every > 1).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    # MLflow prints a "View run at ..." line for every run it closes on a server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def total_epochs(cfg: Any) -> int:
    stages = getattr(cfg.method, "stage_epochs", None)
    if callable(stages):
        return max(1, sum(stages().values()))
    return int(cfg.train.epochs)


def _connect(address: str | None, num_cpus: int | None, env: dict[str, str]) -> None:
    import ray

    from shiftlab.utils.ray_runtime import ensure_ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": False}
    if address or os.environ.get("RAY_ADDRESS"):
        # A running cluster's workers do not have this shell's environment.
        kwargs["runtime_env"] = {"env_vars": env}
    ensure_ray(address, num_cpus=num_cpus, **kwargs)


def _forwarded_env() -> dict[str, str]:
    keys = ("SHIFTLAB_CACHE_DIR", "HF_HUB_OFFLINE", "TORCH_HOME", "PYTHONPATH", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _pregenerate(ctx: dict[str, Any], space: SearchSpace, specs: list[Any] | None) -> None:
    """Generate every distinct image set before trials start, with the whole cluster.

    Inside a trial, generation actors would compete with other trials' trainers for CPUs.
    Sets that depend on continuously sampled values (a searcher's suggestions) cannot be
    listed up front; those trials generate their own (``ensure_generated`` is lock-protected).
    """
    from shiftlab.sweep.trainable import trial_config

    base = validate_dict(ctx["base"], "sweep experiment")
    if base.generate is None:
        return
    from shiftlab.generate.cache import ensure_generated

    if specs is None:
        if any(k.startswith(_GENERATION_PREFIXES) for k in space.parameters):
            return
        cfgs = [base]
    else:
        cfgs = [trial_config(ctx, s) for s in specs]
    seen: set[str] = set()
    for cfg in cfgs:
        ident = json.dumps(
            [cfg.generate.model_dump(mode="json"), cfg.data.source.model_dump(mode="json")], sort_keys=True
        )
        if ident in seen:
            continue
        seen.add(ident)
        t0 = time.perf_counter()
        path = ensure_generated(cfg)
        log.info("generated set ready: %s (%.1f s)", path, time.perf_counter() - t0)


def _build_tuner(ctx: dict[str, Any], state: dict[str, Any], restore: bool) -> Any:
    from ray import tune

    from shiftlab.sweep.callback import TrialRunCloser, name_trial
    from shiftlab.sweep.trainable import run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": DRIVER_CPU})
    tune_dir = join(state["run_dir"], "tune")
    if restore:
        return tune.Tuner.restore(
            str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    space = parse_space(state["space"], state["space_path"])
    metric, mode = space.metric, space.mode
    opts = state["options"]
    scheduler = None
    if opts["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # One iteration per reported epoch plus the trial's final report. ASHA stops every
        # trial that reaches max_t, so the default leaves room for all of them.
        asha = {"max_t": 4 * state["epochs"] + 4, "grace_period": 1, "reduction_factor": 2, **space.asha}
        scheduler = ASHAScheduler(time_attr="training_iteration", **asha)
    search_alg = None
    if opts["search"] == "optuna":
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        param_space: dict[str, Any] = {
            "params": {k: p.tune_domain(for_optuna=True) for k, p in space.parameters.items()}
        }
        search_alg = OptunaSearch(seed=state["sweep_seed"] % (2**32))
        seeds = space.seeds or []
        if len(seeds) > 1:
            search_alg = Repeater(search_alg, repeat=len(seeds), set_index=True)
        num_samples = state["num_samples"] * max(1, len(seeds))
    else:
        param_space = {"trial": tune.grid_search(state["trials"])}
        num_samples = 1
    tune_config = tune.TuneConfig(
        metric=metric,
        mode=mode,
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=num_samples,
        max_concurrent_trials=state["max_concurrent"],
        trial_name_creator=name_trial,
        trial_dirname_creator=name_trial,
    )
    run_config = tune.RunConfig(
        name="tune",
        storage_path=state["run_dir"],
        callbacks=[TrialRunCloser(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"])],
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _context(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "sweep_dir": state["run_dir"],
        "sweep_name": state["name"],
        "base": state["experiment"],
        "tracking_uri": state["tracking_uri"],
        "experiment_name": state["mlflow_experiment"],
        "experiment_id": state["mlflow_experiment_id"],
        "parent_run_id": state["parent_run_id"],
        "seeds": state["space"].get("seeds"),
        "env": _forwarded_env(),
        "cwd": os.getcwd(),
        "runner": os.environ.get("SHIFTLAB_SWEEP_RUNNER", "shiftlab.runner:run_experiment"),
    }


def prepare_sweep(
    experiment: str | Path, space_path: str | Path, overrides: list[str], options: SweepOptions
) -> dict[str, Any]:
    """Validate everything, create the run dir and the MLflow parent run; no Ray yet."""
    _tune_env()
    cfg = load_experiment(experiment, overrides)
    space = load_space(space_path)
    validate_space(space, cfg, str(experiment))
    if options.scheduler not in ("fifo", "asha"):
        raise ConfigError(f"--scheduler must be asha or fifo, got {options.scheduler!r}")
    if options.search not in ("random", "optuna"):
        raise ConfigError(f"--search must be random or optuna, got {options.search!r}")
    num_samples = options.num_samples or space.num_samples or 1
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    name = options.name or f"{cfg.name}-{Path(space_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not _NAME.match(name):
        raise ConfigError(f"sweep name {name!r}: use letters, digits, '_', '.', '-'")
    folder = RunFolder(join(absolute(cfg.output_dir), name))
    run_dir = folder.location
    if folder.exists(STATE_FILE):
        raise ConfigError(f"{run_dir} already holds a sweep: continue it with --resume {run_dir}, or pick --name")

    trials = expand_trials(space, num_samples, cfg.seed) if options.search == "random" else None
    base = cfg.model_dump(mode="json")
    for t in trials or []:
        # Values valid alone may still clash together: check every trial before any run exists.
        data = apply_params(base, t.params)
        if t.seed is not None:
            data["seed"] = t.seed
        validate_dict(data, f"{space_path}: trial {trial_name(t.index, t.params, t.seed)}")

    from shiftlab.tracking.mlflow_run import (
        default_artifact_location,
        default_tracking_uri,
        get_or_create_experiment,
    )

    uri = options.tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri(cfg.output_dir)
    uri = runs.absolute_tracking_uri(uri)
    exp_name = cfg.tracking.experiment_name or cfg.name
    local = uri.startswith("sqlite:")
    client = runs.client_for(uri)
    exp_id = get_or_create_experiment(client, exp_name, default_artifact_location(cfg.output_dir) if local else None)
    if "mlflow.experimentKind" not in client.get_experiment(exp_id).tags:
        # The MLflow 3 UI opens such experiments on their runs table (else on GenAI traces).
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    parent = runs.create_parent(
        client,
        exp_id,
        name,
        {
            "shiftlab.experiment": cfg.name,
            "shiftlab.space": str(space_path),
            "shiftlab.search": options.search,
            "shiftlab.scheduler": options.scheduler,
            "shiftlab.run_dir": str(run_dir),
        },
    )
    params = {f"space.{k}": p.describe() for k, p in space.parameters.items()}
    params.update(
        {
            "sweep.metric": space.metric,
            "sweep.mode": space.mode,
            "sweep.search": options.search,
            "sweep.scheduler": options.scheduler,
            "sweep.num_samples": str(num_samples),
            "sweep.seeds": json.dumps(space.seeds),
            "sweep.trials": str(len(trials) if trials is not None else num_samples * len(space.seed_list)),
            "experiment": str(experiment),
        }
    )
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(parent, params=items[i : i + 100])
    client.log_text(parent, json.dumps(space.raw, indent=2, default=str), "search_space.json")
    state = {
        "name": name,
        "run_dir": str(run_dir),
        "experiment_path": str(experiment),
        "overrides": list(overrides),
        "experiment": _absolute_base(cfg),
        "space_path": str(space_path),
        "space": space.raw,
        "options": {
            "scheduler": options.scheduler,
            "search": options.search,
            "max_concurrent": options.max_concurrent,
        },
        "num_samples": num_samples,
        "sweep_seed": cfg.seed,
        "epochs": total_epochs(cfg),
        "trials": [t.to_dict() for t in trials] if trials is not None else None,
        "tracking_uri": uri,
        "mlflow_experiment": exp_name,
        "mlflow_experiment_id": exp_id,
        "parent_run_id": parent,
        "address": options.address or cfg.ray.address,
        "num_cpus": cfg.ray.num_cpus,
        "max_concurrent": None,
        "status": "created",
    }
    save_state(state)
    return state


def save_state(state: dict[str, Any], status: str | None = None) -> None:
    """Write sweep.json (with ``status`` when given) to the sweep's run directory."""
    folder = RunFolder(state["run_dir"])
    write_json(folder.path(STATE_FILE), {**state, "status": status} if status else state)
    folder.publish(STATE_FILE)


def _absolute_base(cfg: Any) -> dict[str, Any]:
    """The experiment as trials see it: absolute output paths (trials run in other directories),
    generated sets kept beside the experiment's runs so that later sweeps reuse them."""
    base = cfg.model_dump(mode="json")
    out = absolute(cfg.output_dir)
    base["output_dir"] = out
    if base.get("generate") and not base["generate"].get("output_root"):
        base["generate"]["output_root"] = join(out, "generated")
    return base


def _plan_concurrency(state: dict[str, Any]) -> int:
    import ray

    from shiftlab.sweep.space import TrialSpec
    from shiftlab.sweep.trainable import trial_config

    ctx = _context(state)
    total = ray.cluster_resources()
    available = ray.available_resources()
    gpus = float(total.get("GPU", 0.0))
    # Trials may sweep the worker count: plan for the largest trial.
    if state["trials"]:
        cfgs = [trial_config(ctx, TrialSpec.from_dict(t)) for t in state["trials"]]
    else:
        cfgs = [validate_dict(state["experiment"], "sweep experiment")]
    needs = [trial_need(c, gpus) for c in cfgs]
    need = max(needs, key=lambda n: (n.cpu, n.gpu))
    n = max_concurrent_trials(need, available, state["options"]["max_concurrent"], total)
    log.info("each trial needs %s; running up to %d trial(s) at once", need.describe(), n)
    return n


def execute(state: dict[str, Any], restore: bool = False) -> SweepOutcome:
    """Start (or continue) the Tune run of a prepared sweep and summarise it."""
    _tune_env()
    ctx = _context(state)
    _connect(state.get("address"), state.get("num_cpus"), ctx["env"])
    client = runs.client_for(state["tracking_uri"])
    client.update_run(state["parent_run_id"], status="RUNNING")
    if not restore:
        from shiftlab.sweep.space import TrialSpec

        try:
            state["max_concurrent"] = _plan_concurrency(state)
            save_state(state, "running")
            specs = [TrialSpec.from_dict(t) for t in state["trials"]] if state["trials"] else None
            _pregenerate(ctx, parse_space(state["space"], state["space_path"]), specs)
        except BaseException as exc:
            # Nothing ran: the parent must not stay RUNNING (a resume reopens it).
            client.set_tag(state["parent_run_id"], "shiftlab.error", str(exc)[:5000])
            client.set_terminated(state["parent_run_id"], status="FAILED")
            raise
    tuner = _build_tuner(ctx, state, restore)
    try:
        results = tuner.fit()
    except BaseException:
        client.set_tag(state["parent_run_id"], "shiftlab.interrupted", "true")
        raise
    errors = sum(1 for r in results if r.error is not None)
    outcome = finalize(state, results_count=len(results), errors=errors)
    save_state(state, "finished")
    return outcome


def finalize(state: dict[str, Any], results_count: int, errors: int) -> SweepOutcome:
    """Close stray runs, rank configurations, log mean ± std and the leaderboard to the parent."""
    client = runs.client_for(state["tracking_uri"])
    exp_id, parent = state["mlflow_experiment_id"], state["parent_run_id"]
    for run in runs.children(client, exp_id, parent):
        # Workers of a stopped trial may have touched the run after the driver closed it.
        if run.info.status == "RUNNING":
            runs.close_run(client, run.info.run_id, "FINISHED", early_stopped=True)
    space = parse_space(state["space"], state["space_path"])
    board = leaderboard.build(client, exp_id, parent, state["name"], space.metric, space.mode)
    _log_board(client, parent, board)
    folder = RunFolder(state["run_dir"])
    write_json(folder.path("leaderboard.json"), board.to_dict())
    write_text(folder.path("leaderboard.txt"), board.render() + "\n")
    for name in ("leaderboard.json", "leaderboard.txt"):
        folder.publish(name)
    client.set_terminated(parent, status="FINISHED" if errors < max(results_count, 1) else "FAILED")
    return SweepOutcome(
        folder.path(), parent, state["tracking_uri"], board, results_count, errors, folder.location
    )


def _log_board(client: Any, parent: str, board: leaderboard.Leaderboard) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for rank, row in enumerate(board.rows, 1):
        mean, std = row.stats()
        if mean is None:
            continue
        metrics += [
            Metric(f"{row.config_id}.{board.metric}_mean", mean, now, 0),
            Metric(f"{row.config_id}.{board.metric}_std", std or 0.0, now, 0),
        ]
        if rank == 1:
            metrics += [
                Metric(f"best.{board.metric}_mean", mean, now, 0),
                Metric(f"best.{board.metric}_std", std or 0.0, now, 0),
            ]
            for m in board.extra_metrics:
                em, es = row.stats(m)
                if em is not None:
                    metrics += [Metric(f"best.{m}_mean", em, now, 0), Metric(f"best.{m}_std", es or 0.0, now, 0)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(parent, metrics=metrics[i : i + 1000])
    if board.best is not None:
        client.set_tag(parent, "shiftlab.best_config", board.best.config_id)
        client.set_tag(parent, "shiftlab.best_params", json.dumps({k: board.best.params.get(k) for k in board.differing}, default=str))
    client.log_text(parent, json.dumps(board.to_dict(), indent=2, default=str), "leaderboard.json")
    client.log_text(parent, board.render() + "\n", "leaderboard.txt")


def run_sweep(
    experiment: str | Path, space_path: str | Path, overrides: list[str] | None = None, options: SweepOptions | None = None
) -> SweepOutcome:
    state = prepare_sweep(experiment, space_path, list(overrides or []), options or SweepOptions())
    return execute(state)


def load_state(run_dir: str | Path) -> dict[str, Any]:
    folder = RunFolder(absolute(run_dir))
    if not folder.exists(STATE_FILE):
        raise ConfigError(f"{run_dir}: not a sweep run directory (no {STATE_FILE})")
    path = folder.pull(STATE_FILE)
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable sweep state: {exc}") from None


def resume_sweep(run_dir: str | Path, address: str | None = None) -> SweepOutcome:
    """Continue an interrupted sweep: finished trials stay, unfinished ones run (into the same runs)."""
    state = load_state(run_dir)
    if address:
        state["address"] = address
    from ray import tune

    tune_dir = join(state["run_dir"], "tune")
    if state.get("max_concurrent") is None or not tune.Tuner.can_restore(tune_dir):
        # Killed before Tune saved anything: start the Tune part afresh (runs are get-or-create).
        return execute(state, restore=False)
    return execute(state, restore=True)
