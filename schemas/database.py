"""Engines for siyu's database and its Alembic migrations, run from code on SQLite or PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import make_url

# Beside this module inside the installed package, so migrations run from any working directory
# and from a normal (non-editable) install, with no alembic.ini on disk.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Milliseconds SQLite waits for another writer before giving up ("database is locked").
SQLITE_BUSY_TIMEOUT_MS = 30_000


# Alembic's `context` and `op` are process-wide proxies, so two threads migrating at once (two
# flows starting under one `serve()`) would trample each other; processes are kept apart by
# database locks in env.py instead.
_ALEMBIC_LOCK = threading.Lock()


def _set_sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    # WAL lets readers work while a flow writes; NORMAL is durable enough under WAL; SQLite leaves
    # foreign keys off unless asked on each connection, and the busy timeout turns a concurrent
    # write into a wait instead of an error.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str) -> sqlalchemy.Engine:
    """An engine for siyu's database: SQLite tuned for a local app, PostgreSQL with pre-ping."""
    parsed = make_url(url)
    # SQLAlchemy quotes a failed statement's parameters in its exceptions, and those end up in
    # Prefect's run states and logs: keep customer ids and payloads out of them.
    options: dict[str, Any] = {"hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(parsed, **options)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    # Pre-ping: a worker idle overnight finds its pooled connections closed by the server.
    return sqlalchemy.create_engine(parsed, pool_pre_ping=True, **options)


def _alembic_config(url: str | sqlalchemy.Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The URL travels as an attribute, not a config option: the ini parser would choke on the
    # percent signs of a URL-encoded password or `options=-csearch_path%3D...`.
    if isinstance(url, sqlalchemy.Engine):
        config.attributes["engine"] = url
    else:
        config.attributes["url"] = url
    return config


def upgrade(url: str | sqlalchemy.Engine, revision: str = "head") -> None:
    """Migrate the database at `url` (or behind an engine) up to `revision`; a no-op when there."""
    with _ALEMBIC_LOCK:
        command.upgrade(_alembic_config(url), revision)


def downgrade(url: str | sqlalchemy.Engine, revision: str = "base") -> None:
    """Migrate the database at `url` (or behind an engine) down to `revision`."""
    with _ALEMBIC_LOCK:
        command.downgrade(_alembic_config(url), revision)


def head_revision() -> str:
    """The newest migration this version of siyu ships."""
    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError("siyu ships no migrations: the package is incomplete, reinstall it")
    return head


def current_revision(url: str | sqlalchemy.Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    engine = url if isinstance(url, sqlalchemy.Engine) else make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if engine is not url:
            engine.dispose()
