"""Tables of the store: forecast jobs and forecast records (SQLAlchemy 2 declarative models).

Times are naive UTC datetimes (the same on SQLite and PostgreSQL). Changing a table means a new
Alembic revision under ``migrations/versions`` (``tests/test_store.py`` checks they agree).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
FINISHED = ("succeeded", "failed", "canceled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=False)}


class Job(Base):
    """One forecast job: its request body, where it is in its life, and its one result."""

    __tablename__ = "kronos_jobs"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency"),
                      Index("ix_jobs_status_created", "status", "created_at"),
                      Index("ix_jobs_owner_created", "owner", "created_at"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), default="")  # API key id ("" without keys)
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(32), default="http")  # http, queue ...
    batch: Mapped[bool] = mapped_column(default=False)  # body is {"batch": [...]}
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(128))
    lease_expires_at: Mapped[Optional[datetime]]
    result: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # {"error", "field", "status"}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[Optional[datetime]]
    finished_at: Mapped[Optional[datetime]]


class ForecastRecord(Base):
    """One forecast of one series (a sync request, a batch item or a job item), for audit."""

    __tablename__ = "kronos_forecasts"
    __table_args__ = (Index("ix_forecasts_request", "request_id", "item"),
                      Index("ix_forecasts_created", "created_at"),
                      Index("ix_forecasts_series", "series_id", "forecast_end"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(255))
    item: Mapped[int] = mapped_column(Integer, default=0)  # index in a batch
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    route: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[Optional[str]] = mapped_column(String(255))
    model_version: Mapped[Optional[str]] = mapped_column(String(255))
    device: Mapped[Optional[str]] = mapped_column(String(32))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[Optional[int]] = mapped_column(BigInteger)
    input_summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_sha256: Mapped[str] = mapped_column(String(64))
    input: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # only with store_inputs
    predictions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # {"mean": [...], "quantiles"}
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[Optional[str]] = mapped_column(Text)
    # Live accuracy (requests with a series_id): what outcomes are matched and scored against.
    series_id: Mapped[Optional[str]] = mapped_column(String(255))
    forecast_start: Mapped[Optional[datetime]]
    forecast_end: Mapped[Optional[datetime]]
    reference: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # last input row, naive scale


class Outcome(Base):
    """An actual candle of a series (``POST /v1/outcomes``), stored once per timestamp."""

    __tablename__ = "kronos_outcomes"
    __table_args__ = (UniqueConstraint("series_id", "timestamp", name="uq_outcomes_series_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_id: Mapped[str] = mapped_column(String(255))
    timestamp: Mapped[datetime]
    candle: Mapped[dict[str, Any]] = mapped_column(JSON)  # column -> value
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class ForecastScore(Base):
    """One forecast step scored against its outcome: forecast, actual, quantiles and reference."""

    __tablename__ = "kronos_forecast_scores"
    __table_args__ = (UniqueConstraint("forecast_id", "step", name="uq_scores_forecast_step"),
                      Index("ix_scores_version_created", "model_version", "forecast_created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    forecast_id: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)  # 1 = the first forecast step
    series_id: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(255))
    timestamp: Mapped[datetime]
    forecast_created_at: Mapped[datetime]
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    scored_at: Mapped[datetime] = mapped_column(default=utcnow)
