"""siyu's database keeps customer data in its room: private files, errors that quote nothing."""

from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.exc import IntegrityError

from siyu.schemas.database import ScrubbedDriverError, make_engine
from siyu.schemas.settings import Settings

CUSTOMER_ID = "C98761234"  # a customer id no other test uses


def _table(engine: sqlalchemy.Engine) -> sqlalchemy.Table:
    metadata = sqlalchemy.MetaData()
    table = sqlalchemy.Table(
        "scrub_probe",
        metadata,
        sqlalchemy.Column("customer_id", sqlalchemy.String(20), primary_key=True),
        sqlalchemy.Column("aum", sqlalchemy.Integer, sqlalchemy.CheckConstraint("aum >= 0")),
    )
    metadata.create_all(engine)
    return table


def _failing_insert(database_url: str) -> IntegrityError:
    """A duplicate key whose value is a customer id: the database itself would quote it."""
    engine = make_engine(database_url)
    try:
        table = _table(engine)
        with engine.begin() as connection:
            connection.execute(table.insert(), [{"customer_id": CUSTOMER_ID, "aum": 1}])
        with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
            connection.execute(table.insert(), [{"customer_id": CUSTOMER_ID, "aum": 2}])
        return raised.value
    finally:
        engine.dispose()


def test_a_failed_statement_quotes_no_customer_id_anywhere(database_url: str) -> None:
    error = _failing_insert(database_url)

    told = "".join(traceback.format_exception(error))
    assert CUSTOMER_ID not in str(error)
    assert CUSTOMER_ID not in repr(error)
    assert CUSTOMER_ID not in told
    assert CUSTOMER_ID.encode() not in pickle.dumps(error)
    assert "hidden due to hide_parameters" in str(error)
    assert "INSERT INTO scrub_probe" in str(error)  # still says which statement failed
    assert isinstance(error.orig, ScrubbedDriverError)


def test_postgres_errors_keep_their_sqlstate_and_constraint(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        error = _failing_insert(database_url)
        assert "UNIQUE constraint failed: scrub_probe.customer_id" in str(error)
        return
    error = _failing_insert(database_url)
    assert error.orig.pgcode == "23505"
    assert "scrub_probe_pkey" in str(error)
    assert "DETAIL" not in str(error)


def test_a_failed_statement_raised_through_a_flow_leaves_no_customer_id_in_prefect(
    prefect_server, database_url: str
) -> None:
    from prefect import flow, task
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL

    # Results persisted on purpose (in Prefect's local storage): the failed task's exception is
    # what Prefect would store.
    @task(persist_result=True)
    def store_twice() -> None:
        _failing_insert(database_url)
        engine = make_engine(database_url)
        try:
            table = _table(engine)
            with engine.begin() as connection:
                connection.execute(table.insert(), [{"customer_id": CUSTOMER_ID, "aum": 3}])
        finally:
            engine.dispose()

    @flow(name="scrub-probe", persist_result=True)
    def probe() -> None:
        store_twice()

    state = probe(return_state=True)
    APILogHandler().flush()  # the run's logs are in the server before we look

    assert state.is_failed()
    assert CUSTOMER_ID not in (state.message or "")
    with pytest.raises(IntegrityError) as raised:
        state.result()
    assert CUSTOMER_ID.encode() not in pickle.dumps(raised.value)
    stored = _files(Path(PREFECT_LOCAL_STORAGE_PATH.value()))
    database = PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[-1]
    stored += [
        Path(database + suffix) for suffix in ("", "-wal") if Path(database + suffix).exists()
    ]
    assert stored, "expected Prefect's database and result files to look into"
    for path in stored:
        assert CUSTOMER_ID.encode() not in path.read_bytes(), path


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_the_sqlite_database_is_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # as a careless shell would leave it
    try:
        url = f"sqlite:///{tmp_path / 'home' / 'siyu.db'}"
        engine = make_engine(url)
        try:
            _table(engine)
            with engine.begin() as connection:
                connection.exec_driver_sql("INSERT INTO scrub_probe VALUES ('C1', 1)")
            # SQLite's -wal and -shm exist only while it is open: look now.
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "home").iterdir()}
        finally:
            engine.dispose()
    finally:
        os.umask(previous)

    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    assert {"siyu.db", "siyu.db-wal"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_an_existing_readable_database_is_made_private(tmp_path: Path) -> None:
    database = tmp_path / "siyu.db"
    database.touch()
    database.chmod(0o644)

    make_engine(f"sqlite:///{database}").dispose()

    assert database.stat().st_mode & 0o777 == 0o600


def test_the_home_is_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SIYU_HOME", str(tmp_path / "home"))

    home = Settings.from_env().make_home()

    assert home.stat().st_mode & 0o777 == 0o700
