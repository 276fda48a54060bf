"""Migrations, engines and the SiyuDatabase block, on SQLite and (when CI names it) PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from siyu.blocks.database import SiyuDatabase
from siyu.schemas.database import (
    MIGRATIONS_DIR,
    _alembic_config,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from siyu.schemas.models import Base, Export, QuarantinedRow

# Every table the models define (later revisions add theirs), and at least these.
SIYU_TABLES = set(Base.metadata.tables)
assert {
    "exports",
    "quarantined_rows",
    "contacts",
    "contact_mobiles",
    "managed_tags",
    "synced_tags",
    "outbox",
} <= SIYU_TABLES


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def add_export_with_quarantine(engine: sqlalchemy.Engine) -> int:
    with Session(engine) as session:
        export = Export(file_name="export_20261124.csv", checksum="ab" * 32, status="blocked")
        export.export_date = dt.date(2026, 11, 24)
        session.add(export)
        session.flush()
        session.add_all(
            QuarantinedRow(export_id=export.id, row_number=n, reasons="aum_not_negative")
            for n in (3, 7)
        )
        session.commit()
        return export.id


def config_with_extra_revision(url: str, directory: Path, body: str) -> object:
    """Alembic config whose history is siyu's plus one test revision 9001 written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    header = f"""\
        import sqlalchemy as sa
        from alembic import op

        revision = "9001"
        down_revision = "{head_revision()}"
        branch_labels = None
        depends_on = None

        """
    (directory / "9001_test_only.py").write_text(textwrap.dedent(header) + textwrap.dedent(body))
    config = _alembic_config(url)
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(MIGRATIONS_DIR / "versions"), str(directory)])
    )
    return config


def test_upgrade_to_head_and_downgrade_to_base(database_url: str) -> None:
    assert current_revision(database_url) is None

    upgrade(database_url)
    assert current_revision(database_url) == head_revision()
    assert table_names(database_url) == SIYU_TABLES | {"alembic_version"}

    downgrade(database_url)
    assert current_revision(database_url) is None
    assert table_names(database_url) == {"alembic_version"}


def test_models_match_the_migrated_schema(engine: sqlalchemy.Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        export_id = add_export_with_quarantine(engine)
        upgrade(database_url)
        assert current_revision(database_url) == head_revision()
        with Session(engine) as session:
            assert session.get(Export, export_id) is not None
            count = select(func.count()).select_from(QuarantinedRow)
            assert session.scalar(count) == 2
    finally:
        engine.dispose()


def test_concurrent_upgrades_in_threads_all_succeed(database_url: str) -> None:
    # Two flows starting at once under one `serve()` both make sure the schema is current.
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def migrate() -> None:
        start.wait()
        try:
            upgrade(database_url)
        except BaseException as error:  # noqa: BLE001 - reported to the main thread below
            errors.append(error)

    workers = [threading.Thread(target=migrate) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    assert current_revision(database_url) == head_revision()
    assert table_names(database_url) == SIYU_TABLES | {"alembic_version"}


def test_concurrent_upgrades_in_processes_all_succeed(database_url: str) -> None:
    # Several workers, each its own process, may start at once against a fresh database.
    script = "import sys; from siyu.schemas.database import upgrade; upgrade(sys.argv[1])"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(worker.wait(timeout=120), worker.stderr.read()) for worker in workers]
    for worker in workers:
        worker.stdout.close()
        worker.stderr.close()

    assert [code for code, _ in outcomes] == [0, 0, 0], [err for _, err in outcomes]
    assert current_revision(database_url) == head_revision()


def test_table_rebuild_in_a_later_migration_keeps_child_rows(
    engine: sqlalchemy.Engine, database_url: str, tmp_path: Path
) -> None:
    # On SQLite, batch mode drops and recreates `exports`; with foreign keys on, that drop would
    # cascade-delete the quarantine. The migration environment must prevent it.
    export_id = add_export_with_quarantine(engine)
    config = config_with_extra_revision(
        database_url,
        tmp_path / "versions",
        """\
        def upgrade():
            with op.batch_alter_table("exports", recreate="auto") as batch_op:
                batch_op.add_column(sa.Column("source", sa.String(32), nullable=True))
                batch_op.alter_column("file_name", type_=sa.String(300))

        def downgrade():
            with op.batch_alter_table("exports") as batch_op:
                batch_op.drop_column("source")
                batch_op.alter_column("file_name", type_=sa.String(255))
        """,
    )

    command.upgrade(config, "heads")
    assert current_revision(database_url) == "9001"
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM quarantined_rows WHERE export_id = :id"),
            {"id": export_id},
        )
        assert rows.scalar_one() == 2

    command.downgrade(config, head_revision())
    assert current_revision(database_url) == head_revision()
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(QuarantinedRow)) == 2


def test_a_failing_migration_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    config = config_with_extra_revision(
        database_url,
        tmp_path / "versions",
        """\
        def upgrade():
            op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
            raise RuntimeError("migration 9001 broke on purpose")

        def downgrade():
            pass
        """,
    )

    with pytest.raises(RuntimeError, match="broke on purpose"):
        command.upgrade(config, "heads")

    # One transaction for the whole run: not even 0001's tables or the version row remain.
    assert current_revision(database_url) is None
    assert table_names(database_url) & (SIYU_TABLES | {"half_done"}) == set()


def test_sqlite_connections_are_tuned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'not' / 'yet' / 'there' / 'siyu.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        engine.dispose()
    assert (tmp_path / "not" / "yet" / "there" / "siyu.db").exists()


def test_migrations_leave_sqlite_foreign_keys_on(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'siyu.db'}")
    try:
        upgrade(engine)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_upgrade_works_from_any_working_directory(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    upgrade("sqlite:///state/siyu.db")

    assert (elsewhere / "state" / "siyu.db").exists()
    assert current_revision("sqlite:///state/siyu.db") == head_revision()


def test_migrations_ship_inside_the_package() -> None:
    import siyu.schemas

    assert MIGRATIONS_DIR.parent == Path(siyu.schemas.__file__).resolve().parent
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()


def test_migrations_keep_the_apps_logging(tmp_path: Path) -> None:
    app_logger = logging.getLogger("siyu.test.app")
    app_logger.setLevel(logging.DEBUG)
    root_handlers = list(logging.getLogger().handlers)

    upgrade(f"sqlite:///{tmp_path / 'siyu.db'}")

    assert app_logger.level == logging.DEBUG
    assert not app_logger.disabled
    assert logging.getLogger().handlers == root_handlers


def test_block_upgrades_and_hands_out_an_engine(database_url: str) -> None:
    block = SiyuDatabase(url=database_url)

    block.upgrade()

    assert current_revision(database_url) == head_revision()
    engine = block.get_engine()
    try:
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(Export)).scalar() == 0
    finally:
        engine.dispose()


def test_block_keeps_its_url_secret() -> None:
    url = "postgresql+psycopg2://siyu:hunter2-pw@db.bank.example:5432/siyu"
    block = SiyuDatabase(url=url)

    assert "hunter2-pw" not in repr(block)
    assert "hunter2-pw" not in str(block)
    assert "hunter2-pw" not in block.model_dump_json()
    assert SiyuDatabase._to_block_schema().fields["secret_fields"] == ["url"]
    assert SiyuDatabase.get_block_type_slug() == "siyu-database"
    engine = block.get_engine()
    try:
        assert engine.url.password == "hunter2-pw"
        assert "hunter2-pw" not in repr(engine)
    finally:
        engine.dispose()


def test_0002_keeps_outbox_entries_and_contacts_and_gives_them_a_plan(database_url: str) -> None:
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    try:
        stamp = dt.datetime(2026, 11, 30, 8, tzinfo=dt.UTC)
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO outbox (key, kind, batch, target, payload, status, attempts, "
                    "created_at, updated_at) VALUES ('ab12', 'mark_tag', 'tag-sync:export:3', "
                    "'u1/wm1', '{}', 'sending', 1, :t, :t)"
                ),
                {"t": stamp},
            )
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO contacts (userid, external_userid, reachable, seen_at) "
                    "VALUES ('u1', 'wm1', true, :t)"
                ),
                {"t": stamp},
            )

        upgrade(database_url, "0002")

        with engine.connect() as connection:
            entry = connection.execute(
                sqlalchemy.text("SELECT key, plan, status, claimed_at, claimed_by FROM outbox")
            ).one()
            assert tuple(entry) == ("ab12", "tag-sync", "sending", None, None)
            left = connection.execute(sqlalchemy.text("SELECT left_at FROM contacts")).scalar()
            assert left is None
        with engine.begin() as connection:  # a business identity longer than a sha256 hex fits
            long_key = "msg:customer:C00000042:path:onboarding-wealth-2026:touch:2:2026-12:" + (
                "x" * 120
            )
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO outbox (key, kind, plan, batch, target, payload, status, "
                    "attempts, created_at, updated_at) VALUES (:k, 'message', 'path:P1', 'b', "
                    "'C1', '{}', 'pending', 0, :t, :t)"
                ),
                {"k": long_key, "t": stamp},
            )
            connection.execute(
                sqlalchemy.text("DELETE FROM outbox WHERE key = :k"), {"k": long_key}
            )

        downgrade(database_url, "0001")
        assert current_revision(database_url) == "0001"
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT key FROM outbox")).scalar() == "ab12"
            columns = {c["name"] for c in inspect(connection).get_columns("outbox")}
            assert not columns & {"plan", "claimed_at", "claimed_by"}
    finally:
        engine.dispose()
