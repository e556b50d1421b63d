"""The leaderboard of a sweep, read back from MLflow: best configuration first, mean ± std over seeds."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from shiftlab.sweep.space import format_value, short_key
from shiftlab.tracking import runs

# Params that differ between trials by construction, never by choice.
_BOOKKEEPING = ("name", "output_dir", "seed", "description")
_BOOKKEEPING_PREFIXES = ("tracking.", "ray.")


@dataclass
class TrialRow:
    name: str
    run_id: str
    seed: str
    status: str
    early_stopped: bool
    value: float | None
    metrics: dict[str, float]


@dataclass
class ConfigRow:
    config_id: str
    params: dict[str, Any]
    trials: list[TrialRow] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        out = []
        for t in self.trials:
            v = t.value if metric == "" else t.metrics.get(metric)
            if v is not None and math.isfinite(v):
                out.append(v)
        return out

    def stats(self, metric: str = "") -> tuple[float | None, float | None]:
        """(mean, sample std) over seeds; the std is None for a single value (no spread known)."""
        vals = self.values(metric)
        if not vals:
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


@dataclass
class Leaderboard:
    sweep: str
    metric: str
    mode: str
    rows: list[ConfigRow]
    differing: list[str]  # config keys whose values differ between configurations
    extra_metrics: list[str]  # further metrics shown with mean ± std (test_*)
    ranking: str = ""  # what the ranking metric is measured on (and whether it uses target labels)

    @property
    def best(self) -> ConfigRow | None:
        return self.rows[0] if self.rows and self.rows[0].stats()[0] is not None else None

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for rank, row in enumerate(self.rows, 1):
            mean, std = row.stats()
            extra = {}
            for m in self.extra_metrics:
                em, es = row.stats(m)
                extra[m] = {"mean": em, "std": es}
            rows.append(
                {
                    "rank": rank,
                    "config_id": row.config_id,
                    "params": {k: row.params.get(k) for k in self.differing},
                    "mean": mean,
                    "std": std,
                    "n": len(row.values("")),
                    "extra": extra,
                    "trials": [
                        {
                            "name": t.name,
                            "run_id": t.run_id,
                            "seed": t.seed,
                            "status": t.status,
                            "early_stopped": t.early_stopped,
                            "value": t.value,
                        }
                        for t in row.trials
                    ],
                }
            )
        return {
            "sweep": self.sweep,
            "metric": self.metric,
            "mode": self.mode,
            "ranking": self.ranking,
            "differing": self.differing,
            "rows": rows,
        }

    def render(self) -> str:
        head = ["#", "config"] + [short_key(k) for k in self.differing]
        head += [f"{self.metric} (mean ± std)", "n"] + [
            f"{m} (mean ± std)" for m in self.extra_metrics
        ]
        head += ["trials"]
        table = [head]
        for rank, row in enumerate(self.rows, 1):
            mean, std = row.stats()
            cells = [str(rank), row.config_id] + [
                format_value(row.params.get(k)) for k in self.differing
            ]
            cells.append(_mean_std(mean, std))
            cells.append(str(len(row.values(""))))
            for m in self.extra_metrics:
                cells.append(_mean_std(*row.stats(m)))
            cells.append(", ".join(_trial_label(t) for t in row.trials))
            table.append(cells)
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        title = f"sweep {self.sweep}: {len(self.rows)} configuration(s), ranked by {self.ranking or f'{self.metric} ({self.mode})'}"
        return title + "\n" + "\n".join(lines)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _trial_label(t: TrialRow) -> str:
    label = t.name.split(" ", 1)[0]
    if t.status != "FINISHED":
        label += f" {t.status}"
    elif t.early_stopped:
        label += " stopped"
    return label


def _as_number(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def build(
    client: Any, experiment_id: str, parent_run_id: str, sweep: str, metric: str, mode: str
) -> Leaderboard:
    groups: dict[str, ConfigRow] = {}
    swept_keys: list[str] = []
    all_params: dict[str, dict[str, str]] = {}
    for run in runs.children(client, experiment_id, parent_run_id):
        tags = run.data.tags
        if tags.get(runs.TAG_KIND, "trial") != "trial":
            continue  # e.g. the demo's reference run, nested under the same parent
        config_id = tags.get(runs.TAG_CONFIG, run.info.run_id)
        swept = json.loads(tags.get(runs.TAG_PARAMS, "{}"))
        swept_keys.extend(k for k in swept if k not in swept_keys)
        row = groups.setdefault(config_id, ConfigRow(config_id, dict(swept)))
        metrics = dict(run.data.metrics)
        # ``final/<m>``: the selected model's score (``<m>`` alone is the last epoch's curve).
        metrics.update(
            {k[len("final/") :]: v for k, v in run.data.metrics.items() if k.startswith("final/")}
        )
        row.trials.append(
            TrialRow(
                name=tags.get("mlflow.runName", run.info.run_id),
                run_id=run.info.run_id,
                seed=tags.get(runs.TAG_SEED, ""),
                status=run.info.status,
                early_stopped=tags.get(runs.TAG_EARLY) == "true",
                value=metrics.get(metric),
                metrics=metrics,
            )
        )
        all_params.setdefault(config_id, dict(run.data.params))
    rows = list(groups.values())
    for row in rows:
        row.trials.sort(key=lambda t: t.name)
        # The logged config fills in values of keys that the space does not sweep.
        for key, value in all_params.get(row.config_id, {}).items():
            row.params.setdefault(key, _as_number(value))
    differing = swept_keys + [k for k in _differing(rows) if k not in swept_keys]
    extra = sorted(
        {
            m
            for row in rows
            for t in row.trials
            for m in t.metrics
            if m.startswith("test") and m.endswith("miou") and "/" not in m
        }
    )
    sign = -1.0 if mode == "max" else 1.0

    def order(row: ConfigRow) -> tuple[int, float, str]:
        mean = row.stats()[0]
        return (1, 0.0, row.config_id) if mean is None else (0, sign * mean, row.config_id)

    rows.sort(key=order)
    return Leaderboard(sweep, metric, mode, rows, differing, extra)


def _differing(rows: list[ConfigRow]) -> list[str]:
    keys: list[str] = []
    swept_first = [k for row in rows for k in row.params]  # swept keys come first in each row
    for key in dict.fromkeys(swept_first):
        if key in _BOOKKEEPING or key.startswith(_BOOKKEEPING_PREFIXES):
            continue
        values = {json.dumps(row.params.get(key), sort_keys=True, default=str) for row in rows}
        if len(values) > 1:
            keys.append(key)
    return keys
