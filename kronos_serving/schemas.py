"""HTTP request and response bodies (the contract of the old service, kept)."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, Strict


Row = Annotated[list[float], Field(min_length=4, max_length=6)]
# Inclusive bounds only: BentoML labels its OpenAPI document 3.0, where exclusive bounds are
# booleans. The runtime still rejects 0 and 1 (quantiles), 0 (temperature, top_p), naming the field.
Probability = Annotated[float, Field(ge=0, le=1)]
Integer = Annotated[int, Strict()]  # JSON integers only: true/false and "3" are 400s, not 1 and 3


class SingleRequest(BaseModel):
    """One series to forecast. Only ``data`` is required."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    data: list[Row] = Field(
        min_length=2, description="Rows of [open, high, low, close(, volume, amount)], oldest first; "
                    "see `columns` for another order.",
        examples=[[[10.0, 10.5, 9.8, 10.2, 1200.0], [10.2, 10.9, 10.1, 10.7, 1500.0],
                   [10.7, 11.0, 10.4, 10.6, 1100.0]]])
    pred_len: Optional[Integer] = Field(None, ge=1, description="Steps to forecast (default from settings).",
                                    examples=[3])
    timestamps: Optional[list[str]] = Field(None, description="ISO-8601 time of each row.")
    future_timestamps: Optional[list[str]] = Field(
        None, description="ISO-8601 times to forecast; default: continue the input's step.")
    columns: Optional[list[str]] = Field(
        None, description="Names of the row values, e.g. [open, high, low, close, volume].")
    temperature: Optional[float] = Field(None, ge=0, le=1e6, description="In [1e-6, 1e6].")
    top_k: Optional[Integer] = Field(None, ge=0, le=2 ** 31 - 1, description="0: no top-k filter.")
    top_p: Optional[float] = Field(None, ge=0, le=1, description="In (0, 1]; 1: no top-p filter.")
    sample_count: Optional[Integer] = Field(None, ge=1, description="Sample paths averaged into the mean.")
    seed: Optional[Integer] = Field(None, ge=0, le=2 ** 63 - 1,
                                description="Makes sampled forecasts reproducible.")
    quantiles: Optional[list[Probability]] = Field(None, description="In (0, 1), e.g. [0.1, 0.5, 0.9]")
    lookback: Optional[Integer] = Field(None, ge=2, description="Use only the last N rows.")
    model_version: Optional[str] = Field(None, description="Pin a model variant (A/B).")
    sticky_key: Optional[str] = Field(
        None, description="Same key, same model variant (e.g. a user or portfolio id).")
    series_id: Optional[str] = Field(
        None, max_length=255, description="Names the series: its forecasts are scored when its "
        "actual candles arrive at /v1/outcomes (live accuracy).")
    calendar: Optional[str] = Field(
        None, max_length=32, description="Calendar of the future timestamps: auto (default, "
        "inferred), 24/7, business_days or an exchange code such as XNYS.")
    return_samples: Optional[bool] = Field(
        None, description="Include the sample paths (column -> paths x steps) in the response.")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    batch: list[SingleRequest] = Field(description="Series to forecast, answered in order.")


# -- responses (the OpenAPI document's typed bodies; kronos_serving/openapi.py) --------------------
SINGLE_EXAMPLE = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6]],
                  "pred_len": 2, "top_k": 1}
SAMPLED_EXAMPLE = {"data": [[10.0, 10.5, 9.8, 10.2, 1200], [10.2, 10.9, 10.1, 10.7, 1500],
                            [10.7, 11.0, 10.4, 10.6, 1100], [10.6, 10.8, 10.3, 10.5, 900]],
                   "timestamps": ["2024-05-02T09:30:00", "2024-05-02T09:35:00",
                                  "2024-05-02T09:40:00", "2024-05-02T09:45:00"],
                   "pred_len": 3, "sample_count": 8, "temperature": 1.0, "top_p": 0.9, "seed": 42,
                   "quantiles": [0.1, 0.5, 0.9]}


class ForecastPoint(BaseModel):
    """One forecast step."""

    timestamp: str = Field(description="ISO-8601 time of the step.", examples=["2024-05-02T09:50:00"])
    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float


class SingleResponse(BaseModel):
    """The forecast of one series."""

    predictions: list[ForecastPoint] = Field(description="The mean forecast, `pred_len` steps.")
    quantiles: Optional[dict[str, list[ForecastPoint]]] = Field(
        None, description="Per-step quantiles over the sample paths, when asked: {\"0.1\": [...]}.")
    model: str = Field(description="The model tag or source served.")
    model_version: str
    device: str
    request_id: str
    seed: int = Field(description="The seed used (the request's, or a random one).")


class BatchResponse(BaseModel):
    results: list[SingleResponse] = Field(description="One result per input series, in order.")


class ErrorBody(BaseModel):
    """Every error: what is wrong, and the field at fault when there is one."""

    error: str = Field(examples=["data[3][1]: Input should be a valid number"])
    field: Optional[str] = Field(None, examples=["data[3][1]"])
    request_id: Optional[str] = None
    detail: Optional[list[dict]] = Field(None, description="pydantic's errors, on schema errors.")
