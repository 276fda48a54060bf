"""Engines for siyu's database and its Alembic migrations, run from code on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url

from siyu.schemas.settings import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

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


class ScrubbedDriverError(Exception):
    """A database driver's error with its text reduced to what names no data.

    PostgreSQL's DETAIL lines quote the row ("Key (customer_id)=(C00000042) already exists"),
    and the driver's exception keeps them in attributes a pickle carries; this keeps the error
    class, SQLSTATE and the constraint, table and column names only.
    """

    def __init__(self, message: str, *, driver_error: str, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.driver_error = driver_error
        self.pgcode = pgcode


def _safe_driver_text(error: BaseException) -> str:
    """What may be said of a driver error: names (SQLSTATE, constraint, table), never values."""
    pgcode = getattr(error, "pgcode", None)
    diag = getattr(error, "diag", None)
    if pgcode is not None or diag is not None:
        names = [
            f"{label} {value}"
            for label, value in (
                ("SQLSTATE", pgcode),
                ("constraint", getattr(diag, "constraint_name", None)),
                ("table", getattr(diag, "table_name", None)),
                ("column", getattr(diag, "column_name", None)),
            )
            if value
        ]
        return "; ".join(names) or "database error"
    if type(error).__module__ == "sqlite3":
        # SQLite's messages name tables, columns and constraints, never the row's values.
        return str(error)
    return "database error (details withheld: they may quote data)"


# Stands in for a failed statement's parameters: non-empty, so the message still says that
# parameters were hidden, and free of data.
_WITHHELD_PARAMETERS = {"parameters": "withheld"}


def _scrub_database_error(context: ExceptionContext) -> None:
    """Strip a failed statement's error of its parameters and of the row the driver quotes.

    Prefect stores a failed task's exception (pickled) and logs its traceback, so the error
    SQLAlchemy raises, and the driver error chained to it, must carry no customer id.
    """
    original = context.original_exception
    wrapped = context.sqlalchemy_exception
    if wrapped is not None:
        wrapped.params = _WITHHELD_PARAMETERS
    driver_errors = getattr(context.dialect.loaded_dbapi, "Error", ())
    if not isinstance(original, driver_errors):
        return  # raised by siyu's own column types: its words name no data
    kind = f"{type(original).__module__}.{type(original).__name__}"
    text = _safe_driver_text(original)
    # The traceback prints the driver error as the cause: only the safe text there too.
    original.args = (text,)
    if wrapped is not None and getattr(wrapped, "orig", None) is original:
        # Same "(module.Class) text" form SQLAlchemy writes, made from the safe text.
        wrapped.args = (f"({kind}) {text}",)
        wrapped.orig = ScrubbedDriverError(  # type: ignore[assignment]
            text, driver_error=kind, pgcode=getattr(original, "pgcode", None)
        )


def _prepare_sqlite_file(database: str) -> None:
    """Create the SQLite file 0600 (in a 0700 directory when siyu makes it) before SQLite does.

    SQLite gives its WAL and shared-memory files the database file's mode, so they stay
    private too; an existing file left readable by others is tightened.
    """
    path = Path(database).expanduser()
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(PRIVATE_DIR_MODE)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    # Another user's file is theirs to fix; ours is made private.
    with contextlib.suppress(PermissionError):
        path.chmod(PRIVATE_FILE_MODE)


def make_engine(url: str) -> sqlalchemy.Engine:
    """An engine for siyu's database: SQLite tuned for a local app, PostgreSQL with pre-ping.

    Errors of failed statements carry neither their parameters nor the rows the database
    quotes (they end up in Prefect's states and logs); a SQLite file is made 0600.
    """
    parsed = make_url(url)
    # SQLAlchemy quotes a failed statement's parameters in its exceptions, and those end up in
    # Prefect's run states and logs: keep customer ids and payloads out of them.
    options: dict[str, Any] = {"hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            _prepare_sqlite_file(database)
        engine = sqlalchemy.create_engine(parsed, **options)
        event.listen(engine, "connect", _set_sqlite_pragmas)
    else:
        # Pre-ping: a worker idle overnight finds its pooled connections closed by the server.
        engine = sqlalchemy.create_engine(parsed, pool_pre_ping=True, **options)
    event.listen(engine, "handle_error", _scrub_database_error)
    return engine


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
