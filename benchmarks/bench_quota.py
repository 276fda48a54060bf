"""Benchmark the send layer: plan 100,000 wanted sends against a 1,000,000-row ledger and reserve them.

Runs on a SQLite file in a temp dir, and on PostgreSQL too when SIYU_TEST_POSTGRES_URL is set
(in a private schema, dropped afterwards). Prints seconds per phase: loading the ledger's counts,
planning, reserving (insert + commit). Filling the ledger is set-up, reported but not the point.

    python -m benchmarks.bench_quota [--ledger 1000000] [--wanted 100000]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from siyu.blocks.send_rules import SendRules
from siyu.schemas.database import make_engine, upgrade
from siyu.tasks.ledger import ledger_counts, reserve
from siyu.tasks.quota import plan_sends

SHANGHAI = ZoneInfo("Asia/Shanghai")
AS_OF = dt.datetime(2026, 12, 15, 10, 0, tzinfo=SHANGHAI)  # a Tuesday
COLUMNS = [
    "target_kind",
    "target_id",
    "programme",
    "step",
    "period",
    "sender",
    "channel",
    "priority",
    "status",
    "reason",
    "planned_at",
    "playbook",
    "playbook_version",
    "send_day",
    "send_month",
]


def ledger_rows(n: int, seed: int = 1) -> pd.DataFrame:
    """n ledger rows: 4 per customer over November and December, mostly settled."""
    rng = np.random.default_rng(seed)
    customers = n // 4
    target = np.repeat(np.arange(customers), 4)[:n]
    slot = np.tile(np.arange(4), customers)[:n]
    day = pd.Timestamp("2026-11-01") + pd.to_timedelta(
        rng.integers(0, 44, n), unit="D"
    )  # 1 Nov - 14 Dec
    status = rng.choice(
        ["delivered", "delivered", "delivered", "failed", "skipped", "planned", "created"], n
    )
    return pd.DataFrame(
        {
            "target_kind": "customer",
            "target_id": [f"C{t:08d}" for t in target],
            "programme": "path:P",
            "step": [f"touch-{s + 1}" for s in slot],
            "period": day.strftime("%Y-%m"),
            "sender": [f"u{t % 50:02d}" for t in target],
            "channel": "mass_template",
            "priority": 100,
            "status": status,
            "reason": np.where(status == "failed", "not_a_contact", None),
            "planned_at": "2026-11-01 02:00:00.000000",
            "playbook": "path-welcome",
            "playbook_version": "1",
            "send_day": day.strftime("%Y-%m-%d"),
            "send_month": day.strftime("%Y-%m"),
        }
    )[COLUMNS]


def wanted_sends(n: int, ledger_customers: int, seed: int = 2) -> pd.DataFrame:
    """n wanted sends: half to customers the ledger knows, a few keys it holds already."""
    rng = np.random.default_rng(seed)
    known = rng.integers(0, ledger_customers, n // 2)
    fresh = ledger_customers + np.arange(n - n // 2)
    targets = np.concatenate([known, fresh])
    return pd.DataFrame(
        {
            "target_kind": "customer",
            "target_id": [f"C{t:08d}" for t in targets],
            "sender": [f"u{t % 50:02d}" for t in targets],
            "channel": rng.choice(["mass_template"] * 9 + ["employee_reminder"], n),
            "programme": rng.choice(["path:P", "cadence:K", "greeting:new-year"], n),
            "step": rng.choice(["touch-1", "touch-2", "touch-3", "eve"], n),
            "period": "2026-12",
            "priority": None,
            "wanted_at": AS_OF,
        }
    )


def fill_sqlite(path: Path, rows: pd.DataFrame) -> None:
    connection = sqlite3.connect(path)
    try:
        placeholders = ", ".join("?" * len(COLUMNS))
        connection.executemany(
            f"INSERT INTO sends ({', '.join(COLUMNS)}) VALUES ({placeholders})",
            rows.itertuples(index=False, name=None),
        )
        connection.commit()
        connection.execute("ANALYZE")
    finally:
        connection.close()


def fill_postgres(engine: sa.Engine, rows: pd.DataFrame) -> None:
    buffer = io.StringIO()
    out = rows.assign(planned_at="2026-11-01 02:00:00+00")
    out.to_csv(buffer, index=False, header=False, quoting=csv.QUOTE_MINIMAL, na_rep="")
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(
                f"COPY sends ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv, NULL '')", buffer
            )
            cursor.execute("ANALYZE sends")
        raw.commit()
    finally:
        raw.close()


def measure(engine: sa.Engine, wanted: pd.DataFrame, rules: SendRules) -> dict[str, float | int]:
    figures: dict[str, float | int] = {}
    with Session(engine) as session:
        started = time.perf_counter()
        counts = ledger_counts(session, wanted, as_of=AS_OF, rules=rules)
        figures["counts"] = time.perf_counter() - started

        started = time.perf_counter()
        plan = plan_sends(wanted, rules, AS_OF, counts)
        figures["plan"] = time.perf_counter() - started

        started = time.perf_counter()
        reserved = reserve(session, plan, playbook="bench", version="1", export_checksum="0" * 64)
        session.commit()
        figures["reserve"] = time.perf_counter() - started
    figures["fits"], figures["deferred"], figures["skipped"] = (
        len(plan.fits),
        len(plan.deferred),
        len(plan.skipped),
    )
    figures["written"] = reserved.written
    return figures


def run_sqlite(work: Path, rows: pd.DataFrame, wanted: pd.DataFrame, rules: SendRules) -> dict:
    path = work / "ledger.db"
    upgrade(f"sqlite:///{path}")
    started = time.perf_counter()
    fill_sqlite(path, rows)
    fill = time.perf_counter() - started
    engine = make_engine(f"sqlite:///{path}")
    try:
        return {"backend": "SQLite", "fill": fill, **measure(engine, wanted, rules)}
    finally:
        engine.dispose()


def run_postgres(base_url: str, rows: pd.DataFrame, wanted: pd.DataFrame, rules: SendRules) -> dict:
    schema = f"siyu_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(base_url, poolclass=NullPool)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = (
        sa.engine.make_url(base_url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        upgrade(url)
        engine = make_engine(url)
        try:
            started = time.perf_counter()
            fill_postgres(engine, rows)
            fill = time.perf_counter() - started
            return {"backend": "PostgreSQL", "fill": fill, **measure(engine, wanted, rules)}
        finally:
            engine.dispose()
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=int, default=1_000_000, help="rows already in the ledger")
    parser.add_argument("--wanted", type=int, default=100_000, help="wanted sends to plan")
    args = parser.parse_args()

    rules = SendRules()
    rows = ledger_rows(args.ledger)
    wanted = wanted_sends(args.wanted, args.ledger // 4)
    results = []
    with tempfile.TemporaryDirectory(prefix="siyu-bench-quota-") as work:
        results.append(run_sqlite(Path(work), rows, wanted, rules))
    if os.environ.get("SIYU_TEST_POSTGRES_URL"):
        results.append(run_postgres(os.environ["SIYU_TEST_POSTGRES_URL"], rows, wanted, rules))

    print(f"\nPlan {args.wanted:,} wanted sends against a ledger of {args.ledger:,} rows\n")
    print(
        "| backend | fill ledger (set-up) | load counts | plan | reserve | total | fits | deferred | skipped |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        total = r["counts"] + r["plan"] + r["reserve"]
        print(
            f"| {r['backend']} | {r['fill']:.1f} s | {r['counts']:.2f} s | {r['plan']:.2f} s | "
            f"{r['reserve']:.2f} s | **{total:.2f} s** | {r['fits']:,} | {r['deferred']:,} | "
            f"{r['skipped']:,} |"
        )


if __name__ == "__main__":
    main()
