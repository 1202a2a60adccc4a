"""Forecast quality: error metrics and naive baselines (pure functions over numpy arrays)."""
from .baselines import naive, seasonal_naive
from .metrics import (column_metrics, coverage, crps_from_samples, direction_accuracy, mae, mape,
                      mase, pinball_loss, rmse, smape)

__all__ = ["column_metrics", "coverage", "crps_from_samples", "direction_accuracy", "mae", "mape",
           "mase", "naive", "pinball_loss", "rmse", "seasonal_naive", "smape"]
