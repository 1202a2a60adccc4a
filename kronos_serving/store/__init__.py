"""The forecast store: jobs and forecast records on SQLite (default) or PostgreSQL.

``Store(settings)`` opens the database named by ``store_url`` (see ``database.py``), migrates it
on first use and holds :class:`JobStore` (``store.jobs``) and :class:`RecordStore`
(``store.records``). Nothing here raises at start-up when the database is down: :meth:`ready`
says so (and retries the migration), and callers answer 503.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from sqlalchemy import text

from ..settings import Settings
from .errors import describe
from .database import make_engine, migrate, redacted, store_url
from .jobs import JobRecord, JobStore
from .outcomes import OutcomeStore
from .records import Forecast, RecordStore, RecordWriter, cutoff

__all__ = ["Forecast", "JobRecord", "JobStore", "OutcomeStore", "RecordStore", "RecordWriter",
           "Store"]
log = logging.getLogger("kronos.store")
RETRY_MIGRATION_S = 5.0


class Store:
    """The engine, the job and record stores over it, and its health."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = store_url(settings.store_url, settings.data_dir)
        self.engine = make_engine(self.url)
        self.jobs = JobStore(self.engine, settings.job_max_attempts)
        self.records = RecordStore(self.engine)
        self.outcomes = OutcomeStore(self.engine)
        self.migrated = False
        self.error: Optional[str] = None
        self._last_try = 0.0
        self.up = False
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def ready(self) -> bool:
        """Migrated and reachable at the last try; migrates on first use (retried every 5 s)."""
        if self.migrated:
            return True
        with self._lock:
            if self.migrated or time.monotonic() - self._last_try < RETRY_MIGRATION_S:
                return self.migrated
            self._last_try = time.monotonic()
            try:
                migrate(self.engine)
                self.migrated, self.error = True, None
                log.info("store ready", extra={"event": "store_ready", "backend": self.backend,
                                               "url": redacted(self.url)})
            except Exception as exc:
                self.error = describe(exc)
                log.error("store unavailable", extra={"event": "store_unavailable",
                                                      "url": redacted(self.url), "error": self.error})
        return self.migrated

    def refresh(self) -> bool:
        """Check the database now (migrate, ``SELECT 1``); blocking, so call it off the event loop."""
        ok = self.ready()
        if ok:
            try:
                with self.engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                self.error = None
            except Exception as exc:
                ok, self.error = False, describe(exc)
        self.up = ok
        return ok

    def state(self) -> dict[str, Any]:
        """What ``/v1/readyz`` reports: the last :meth:`refresh` (the job worker runs it)."""
        return {"status": "ok" if self.up else "down", "backend": self.backend,
                "url": redacted(self.url), "error": None if self.up else self.error}

    def cleanup(self) -> tuple[int, int]:
        """Retention: delete records and finished jobs older than ``retention_days`` (0: keep),
        and the outcomes and scores of the same age."""
        if self.settings.retention_days <= 0:
            return 0, 0
        before = cutoff(self.settings.retention_days)
        self.outcomes.delete_before(before)
        return self.records.delete_before(before), self.jobs.delete_finished_before(before)
