"""The store's database: URL, engine and migrations (run at start-up, one process at a time).

``store_url`` picks it: empty means an SQLite file ``kronos.db`` under ``data_dir`` (WAL mode and
a busy timeout, so several workers on one host share it), ``postgresql+psycopg://...`` a
PostgreSQL shared by several replicas. Migrations are Alembic revisions shipped in this package;
concurrent workers serialise on a file lock (SQLite) or ``pg_advisory_lock`` (PostgreSQL).
"""
from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 0x6B726F6E6F73  # "kronos": the PostgreSQL advisory lock for migrations
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_data_dir() -> Path:
    """``$BENTOML_HOME/kronos`` (``~/bentoml/kronos``): writable wherever the model store is."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "kronos"


def store_url(url: str, data_dir: str) -> str:
    """The configured URL, or the SQLite file under ``data_dir`` (created if missing)."""
    if url:
        return url
    directory = Path(data_dir) if data_dir else default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory.resolve() / 'kronos.db'}"


def redacted(url: str) -> str:
    """The URL without its password, for logs and readiness."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_immediate(connection) -> None:
    # Take the write lock when the transaction starts: a deferred transaction that reads and then
    # writes can fail at once with "database is locked" instead of waiting for the busy timeout.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine with connection settings for several processes sharing the database."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                  "check_same_thread": False,
                                                  "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"connect_timeout": 3})


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> None:
    """``alembic upgrade head`` on ``engine``, one process at a time."""
    config = alembic_config()
    if engine.dialect.name == "sqlite":
        with FileLock(f"{engine.url.database}.migrate.lock", timeout=120):
            with engine.connect() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()
