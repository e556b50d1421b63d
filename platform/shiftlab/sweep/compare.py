"""Find a sweep (by run directory or name) in MLflow and build its leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftlab.sweep import leaderboard
from shiftlab.sweep.state import STATE_FILE, SweepState
from shiftlab.tracking import absolute_tracking_uri, runs
from shiftlab.utils.errors import ConfigError

DEFAULT_URI = "sqlite:///runs/mlflow.db"


def load_leaderboard(
    sweep: str, tracking_uri: str | None = None, metric: str | None = None
) -> leaderboard.Leaderboard:
    """The leaderboard of ``sweep`` ranked by ``metric`` (default: the sweep's own); a metric no
    trial logged is a ConfigError listing the ones they did."""
    if (Path(sweep) / STATE_FILE).is_file():
        state = SweepState.load(sweep)
        uri = absolute_tracking_uri(tracking_uri or state.tracking_uri)
        experiment_id, parent_id = state.mlflow_experiment_id, state.parent_run_id
        default, mode, ranking = state.ranking.metric, state.ranking.mode, state.ranking.describe()
    else:
        uri = absolute_tracking_uri(tracking_uri or DEFAULT_URI)
        parent = _find_parent(sweep, uri)
        experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
        default = parent.data.params.get("sweep.metric", "val_miou")
        mode, ranking = parent.data.params.get("sweep.mode", "max"), ""
    client = runs.client_for(uri)
    board = leaderboard.build(client, experiment_id, parent_id, sweep, metric or default, mode)
    if metric and metric != default:
        _check_metric(board, metric)
        ranking = f"{metric} ({mode})"
    board.ranking = ranking
    return board


def _check_metric(board: leaderboard.Leaderboard, metric: str) -> None:
    logged = sorted({m for row in board.rows for t in row.trials for m in t.metrics})
    if metric not in logged:
        close = [m for m in logged if metric.split("/")[-1].lower() in m.lower()][:10]
        hint = f"; similar: {close}" if close else ""
        raise ConfigError(
            f"--metric {metric!r}: no trial of this sweep logged it{hint} ({len(logged)} metrics logged)"
        )


def _find_parent(sweep: str, uri: str) -> Any:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ConfigError(
            f"{sweep}: not a sweep run directory, and there is no MLflow store at {uri}"
        )
    from mlflow.entities import ViewType

    client = runs.client_for(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    parents = (
        client.search_runs(
            ids,
            filter_string=f"tags.`{runs.TAG_SWEEP}` = '{sweep}' and tags.`{runs.TAG_KIND}` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=10,
        )
        if ids
        else []
    )
    if not parents:
        raise ConfigError(
            f"no sweep named {sweep!r} in {uri} (give its run directory or --tracking-uri)"
        )
    return parents[0]
