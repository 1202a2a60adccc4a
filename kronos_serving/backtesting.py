"""``POST /v1/backtest``: rolling-origin backtests through the shared forecast path.

Every fold of every model version goes to :meth:`ForecastRunner.run` in one call at background
priority, so folds batch with each other and with live traffic; scoring is the runtime's
(:mod:`kronos_runtime.backtest`), the same as the CLI's.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kronos_runtime import InputError
from kronos_runtime.backtest import (BASELINES, BacktestSpec, Fold, FoldForecast, Series,
                                     backtest_report, load_series, plan_folds, season_periods)
from kronos_runtime.engine import Priority
from kronos_runtime.series import ALL_COLUMNS

from .accounting import record_request
from .forecasting import ForecastRunner, RequestFailed
from .requests import _frame, _limit, sampling_params
from .schemas import Probability, Row, SingleRequest
from .settings import Settings

log = logging.getLogger("kronos.backtest")
ROUTE = "/v1/backtest"
DEFAULT_LOOKBACK = 512


class BacktestSeries(BaseModel):
    """One long series: every row with its timestamp."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    data: list[Row] = Field(min_length=3, description="Rows [open, high, low, close(, volume, "
                                                      "amount)], oldest first.")
    timestamps: list[str] = Field(min_length=3, description="ISO-8601 time of each row.")
    columns: Optional[list[str]] = Field(None, description="Names of the row values.")


class BacktestRequest(BaseModel):
    """Series, fold layout, sampling and the model versions to compare."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    series: list[BacktestSeries] = Field(min_length=1, description="One or more long series.")
    horizon: int = Field(ge=1, description="Steps forecast per fold.", examples=[12])
    folds: int = Field(5, ge=1, description="Forecast origins per series (rolling origin).")
    step: Optional[int] = Field(None, ge=1, description="Rows between origins (default: horizon).")
    lookback: Optional[int] = Field(None, ge=2, description="History rows per fold (default 512).")
    temperature: Optional[float] = Field(None, ge=0, le=1e6)
    top_k: Optional[int] = Field(None, ge=0, le=2 ** 31 - 1)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    sample_count: Optional[int] = Field(None, ge=1, description="Sample paths per fold; with more "
                                        "than one, CRPS is scored from them.")
    seed: Optional[int] = Field(None, ge=0, le=2 ** 63 - 1, description="Same seed for every fold.")
    quantiles: Optional[list[Probability]] = Field(None, description="Scored by coverage and "
                                                   "pinball loss, e.g. [0.1, 0.5, 0.9].")
    model_versions: Optional[list[str]] = Field(None, description="Versions (or tags) to compare; "
                                                "default: every served version.")
    season_period: Optional[int] = Field(None, ge=1, description="Seasonal naive period (default "
                                         "from the timestamps: 5 for weekday daily data, 7 with "
                                         "weekends, else bars per day).")


def spec_of(body: BacktestRequest, settings: Settings) -> BacktestSpec:
    """The fold layout and sampling, with the service's defaults and limits applied."""
    _limit("horizon", body.horizon, settings.max_pred_len)
    lookback = _limit("lookback", body.lookback or min(DEFAULT_LOOKBACK, settings.max_lookback),
                      settings.max_lookback)
    sample_count = _limit("sample_count", body.sample_count or settings.default_sample_count,
                          settings.max_sample_count)
    sampling = sampling_params(body, settings, sample_count)
    return BacktestSpec(horizon=body.horizon, folds=body.folds, step=body.step, lookback=lookback,
                        sampling=sampling, quantiles=tuple(body.quantiles or ()),
                        season_period=body.season_period)


def fold_body(fold: Fold, spec: BacktestSpec, version: str) -> SingleRequest:
    """The forecast request of one fold for one model version (already validated data)."""
    return SingleRequest.model_construct(
        data=fold.history[-spec.lookback:].tolist(), columns=list(ALL_COLUMNS),
        timestamps=[t.isoformat() for t in fold.history_stamps[-spec.lookback:]],
        future_timestamps=[t.isoformat() for t in fold.timestamps], pred_len=spec.horizon,
        temperature=spec.sampling.temperature, top_k=spec.sampling.top_k,
        top_p=spec.sampling.top_p, sample_count=spec.sampling.sample_count,
        seed=spec.sampling.seed, quantiles=list(spec.quantiles) or None, model_version=version,
        return_samples=spec.sampling.sample_count > 1)


def records_array(records: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[r[name] for name in ALL_COLUMNS] for r in records], dtype=np.float64)


def fold_forecast(response: dict[str, Any]) -> FoldForecast:
    """A sync response body back as arrays."""
    samples = response.get("samples")
    return FoldForecast(
        records_array(response["predictions"]),
        {float(q): records_array(records) for q, records in response.get("quantiles", {}).items()},
        np.stack([np.asarray(samples[name]) for name in ALL_COLUMNS], axis=-1) if samples else None,
        response["seed"])


def check_fold_count(folds: int, versions: int, settings: Settings) -> None:
    if folds * versions > settings.max_backtest_folds:
        raise InputError("folds", f"{folds} folds x {versions} model versions exceed the limit of "
                                  f"{settings.max_backtest_folds} forecasts")


async def run_backtest(runner: ForecastRunner, body: BacktestRequest, request_id: str
                       ) -> dict[str, Any]:
    """Every fold for every model version in one background-priority call of the shared path."""
    try:
        spec = spec_of(body, runner.settings)
        series: list[Series] = [load_series(_frame(s), s.timestamps, f"series[{i}]")
                                for i, s in enumerate(body.series)]
        folds = plan_folds(series, spec)
        season_periods(series, folds, spec)
        versions = body.model_versions or [v.version for v in runner.variants]
        check_fold_count(len(folds), max(1, len(versions)), runner.settings)
    except InputError as exc:
        raise RequestFailed(400, f"{exc.field}: {exc.message}", exc.field) from exc
    if not versions:
        runner.variant_for(SingleRequest.model_construct())  # 503 while loading
    bodies = [fold_body(fold, spec, version) for version in versions for fold in folds]
    responses = await runner.run(bodies, request_id, index_errors=False,
                                 priority=Priority.BACKGROUND, route=ROUTE)
    forecasts: dict[str, list[FoldForecast]] = {}
    for i, _ in enumerate(versions):
        per_version = responses[i * len(folds):(i + 1) * len(folds)]
        forecasts[per_version[0]["model_version"]] = [fold_forecast(r) for r in per_version]
    report = await asyncio.to_thread(backtest_report, folds, series, spec, forecasts)
    report["request_id"] = request_id
    return report


async def serve_backtest(runner: ForecastRunner, ctx: Any, body: BacktestRequest) -> dict[str, Any]:
    """The route: request id, time limit, status codes, metrics and the request log line."""
    started = time.perf_counter()
    request_id = ctx.request.headers.get("x-request-id") or uuid.uuid4().hex
    ctx.response.headers["X-Request-ID"] = request_id
    summary = {"series": len(body.series), "rows": [len(s.data) for s in body.series][:16],
               "horizon": body.horizon, "folds": body.folds}
    try:
        result = await asyncio.wait_for(run_backtest(runner, body, request_id),
                                        runner.settings.timeout_s)
        ctx.response.status_code, version = 200, ",".join(
            name for name in result["metrics"] if name not in BASELINES)
    except Exception as exc:  # noqa: BLE001 - every failure gets a JSON answer, the worker lives on
        if not isinstance(exc, (RequestFailed, TimeoutError)):
            log.exception("backtest failed", extra={"event": "backtest_failed",
                                                    "request_id": request_id, "input": summary})
            exc = RequestFailed(500, f"backtest failed: {type(exc).__name__}: {exc}")
        failure = exc if isinstance(exc, RequestFailed) else RequestFailed(
            504, f"timed out after {runner.settings.timeout_s} s", retry_after=5)
        ctx.response.status_code, version, result = failure.status, "none", failure.body(request_id)
        if failure.retry_after:
            ctx.response.headers["Retry-After"] = str(failure.retry_after)
    record_request(ROUTE, request_id, ctx.response.status_code, time.perf_counter() - started,
                   version, error=result.get("error"), input=summary)
    return result
