"""A backtest report written as files: JSON (the full report), CSV (folds, metrics) and a PNG chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .series import ALL_COLUMNS


def folds_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per fold step: series, origin, model version, timestamp, forecast and actual columns."""
    rows = []
    for fold in report["folds"]:
        for step, stamp in enumerate(fold["timestamps"]):
            row = {"series": fold["series"], "origin": fold["origin"],
                   "model_version": fold["model_version"], "timestamp": stamp}
            row.update({name: fold["forecast"][name][step] for name in ALL_COLUMNS})
            row.update({f"actual_{name}": fold["actual"][name][step] for name in ALL_COLUMNS})
            rows.append(row)
    return pd.DataFrame(rows)


def metrics_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (model version or baseline, column); nested metrics flattened (coverage_0.1)."""
    rows = []
    for model, per_column in report["metrics"].items():
        for column, metrics in per_column.items():
            row: dict[str, Any] = {"model": model, "column": column}
            for name, value in metrics.items():
                if isinstance(value, dict):
                    row.update({f"{name}_{level}": v for level, v in value.items()})
                elif not isinstance(value, list):
                    row[name] = value
            rows.append(row)
    return pd.DataFrame(rows)


def plot(report: dict[str, Any], history: pd.Series, path: Path) -> None:
    """Close of series 0 with every fold's forecast and, beside it, close MAE per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (series_axis, bars_axis) = plt.subplots(1, 2, figsize=(14, 5),
                                                   gridspec_kw={"width_ratios": [3, 1]})
    series_axis.plot(history.index, history.to_numpy(), color="0.3", linewidth=1, label="actual close")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    versions = list(dict.fromkeys(f["model_version"] for f in report["folds"]))
    for fold in report["folds"]:
        if fold["series"] != 0:
            continue
        colour = colours[versions.index(fold["model_version"]) % len(colours)]
        stamps = pd.to_datetime(fold["timestamps"])
        series_axis.plot(stamps, fold["forecast"]["close"], color=colour, linewidth=1.5)
        if "quantiles" in fold:
            levels = sorted(fold["quantiles"], key=float)
            series_axis.fill_between(stamps, fold["quantiles"][levels[0]]["close"],
                                     fold["quantiles"][levels[-1]]["close"], color=colour, alpha=0.15)
    for i, version in enumerate(versions):
        series_axis.plot([], [], color=colours[i % len(colours)], label=f"forecast {version}")
    series_axis.set_title("Backtest folds (series 0, close)")
    series_axis.legend(loc="best", fontsize=8)
    models = list(report["metrics"])
    maes = [report["metrics"][m]["close"]["mae"] or 0.0 for m in models]
    bars_axis.barh(models, maes, color=[colours[i % len(colours)] for i in range(len(models))])
    bars_axis.set_title("close MAE (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: dict[str, Any], history: pd.Series, out: Path) -> list[Path]:
    """backtest.json, folds.csv, metrics.csv and backtest.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "backtest.json", out / "folds.csv", out / "metrics.csv", out / "backtest.png"]
    paths[0].write_text(json.dumps(report, indent=1))
    folds_frame(report).to_csv(paths[1], index=False)
    metrics_frame(report).to_csv(paths[2], index=False)
    plot(report, history, paths[3])
    return paths
