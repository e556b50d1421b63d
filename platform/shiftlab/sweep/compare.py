"""Find a sweep (by run directory or name) in MLflow and build its leaderboard."""

from __future__ import annotations

from pathlib import Path

from shiftlab.sweep import leaderboard, runs
from shiftlab.utils.errors import ConfigError

DEFAULT_URI = "sqlite:///runs/mlflow.db"


def load_leaderboard(sweep: str, tracking_uri: str | None = None, metric: str | None = None) -> leaderboard.Leaderboard:
    from shiftlab.sweep.driver import STATE_FILE, load_state

    if (Path(sweep) / STATE_FILE).is_file():
        state = load_state(sweep)
        uri = runs.absolute_tracking_uri(tracking_uri or state["tracking_uri"])
        client = runs.client_for(uri)
        space = state["space"]
        return leaderboard.build(
            client,
            state["mlflow_experiment_id"],
            state["parent_run_id"],
            state["name"],
            metric or space.get("metric", "val_miou"),
            space.get("mode", "max"),
        )
    uri = runs.absolute_tracking_uri(tracking_uri or DEFAULT_URI)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ConfigError(f"{sweep}: not a sweep run directory, and there is no MLflow store at {uri}")
    client = runs.client_for(uri)
    from mlflow.entities import ViewType

    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    ids = [e.experiment_id for e in experiments]
    parents = client.search_runs(
        ids,
        filter_string=f"tags.`{runs.TAG_SWEEP}` = '{sweep}' and tags.`{runs.TAG_KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    ) if ids else []
    if not parents:
        raise ConfigError(f"no sweep named {sweep!r} in {uri} (give its run directory or --tracking-uri)")
    parent = parents[0]
    params = parent.data.params
    return leaderboard.build(
        client,
        parent.info.experiment_id,
        parent.info.run_id,
        sweep,
        metric or params.get("sweep.metric", "val_miou"),
        params.get("sweep.mode", "max"),
    )
