"""HTTP request and response bodies (the contract of the old service, kept)."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class SingleRequest(BaseModel):
    """One series to forecast. Only ``data`` is required."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    data: list[list[float]] = Field(
        description="Rows of [open, high, low, close(, volume, amount)], oldest first; "
                    "see `columns` for another order.",
        examples=[[[10.0, 10.5, 9.8, 10.2, 1200.0], [10.2, 10.9, 10.1, 10.7, 1500.0],
                   [10.7, 11.0, 10.4, 10.6, 1100.0]]])
    pred_len: Optional[int] = Field(None, description="Steps to forecast (default from settings).",
                                    examples=[3])
    timestamps: Optional[list[str]] = Field(None, description="ISO-8601 time of each row.")
    future_timestamps: Optional[list[str]] = Field(
        None, description="ISO-8601 times to forecast; default: continue the input's step.")
    columns: Optional[list[str]] = Field(
        None, description="Names of the row values, e.g. [open, high, low, close, volume].")
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    sample_count: Optional[int] = Field(None, description="Sample paths averaged into the mean.")
    seed: Optional[int] = Field(None, description="Makes sampled forecasts reproducible.")
    quantiles: Optional[list[float]] = Field(None, description="e.g. [0.1, 0.5, 0.9]")
    lookback: Optional[int] = Field(None, description="Use only the last N rows.")
    model_version: Optional[str] = Field(None, description="Pin a model variant (A/B).")
    sticky_key: Optional[str] = Field(
        None, description="Same key, same model variant (e.g. a user or portfolio id).")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    batch: list[SingleRequest] = Field(description="Series to forecast, answered in order.")
