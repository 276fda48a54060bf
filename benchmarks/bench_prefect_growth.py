"""How much Prefect's own database grows for a day of siyu's schedule, measured, not guessed.

A Prefect server (`prefect server start`, SQLite) runs in a fresh temp PREFECT_HOME; the sandbox
stands in for WeCom with a generated bank. Each kind of scheduled flow is run the way its
deployment runs it (real flows, real tasks, logs and artifacts), and after each kind the
server's database is measured once it has gone quiet (the client ships logs and the server
persists events in batches). Growth per run x runs per day of the schedule in
deployments/specs.py = growth per day. Sizes are SQLite pages in use (page_count - freelist),
after a WAL checkpoint, split by table (indexes counted with their table) through `dbstat`.

    python -m benchmarks.bench_prefect_growth [--customers 2000] [--json out.json]

Events are vacuumed by the server after PREFECT_SERVER_EVENTS_RETENTION_PERIOD (7 days by
default); flow runs, task runs, logs and artifacts stay until the flow-run vacuum is enabled
(PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED='["events","flow_runs"]', with its retention
period): the projection below says what a year costs either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ZONE = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 23)  # a Monday: the Monday slot runs
EVENT_TABLES = {"events", "event_resources"}
EVENT_RETENTION_DAYS = 7


def _wait_http(url: str, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was healthy")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not healthy within {seconds:.0f} s")


def _start_server(home: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_HOME=str(home))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_http(f"http://127.0.0.1:{port}/api/health", proc, "the Prefect server")
    return proc


class PrefectDatabase:
    """Prefect's SQLite file, measured from the side (read-only except for a WAL checkpoint)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    def used_bytes(self) -> int:
        """Bytes of pages in use, after moving the WAL into the main file."""
        with self._connect() as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            free = connection.execute("PRAGMA freelist_count").fetchone()[0]
            size = connection.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def by_table(self) -> dict[str, int]:
        """Bytes per table, its indexes included."""
        with self._connect() as connection:
            owner = dict(connection.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
            sizes: dict[str, int] = {}
            for name, size in connection.execute(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"
            ):
                table = owner.get(name, name)
                sizes[table] = sizes.get(table, 0) + int(size)
        return sizes

    def settled(self, quiet_seconds: float = 6.0, limit: float = 90.0) -> dict[str, int]:
        """Per-table bytes once nothing has changed for `quiet_seconds` (logs, events landed)."""
        deadline = time.monotonic() + limit
        last, since = self.by_table(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            self.used_bytes()  # checkpoint, so dbstat sees what the WAL held
            now = self.by_table()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_seconds:
                break
        return last


def _at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), ZONE)


def _kinds(export: Path) -> list[tuple[str, float, Callable[[], list[Any]]]]:
    """(flow, runs per day in siyu's schedule, what runs a measured batch of it)."""
    from siyu.flows.contacts_sync import contacts_sync
    from siyu.flows.conversion_path import path_enroll, path_touch
    from siyu.flows.group_cadence import group_cadence, group_health, rewards_settle
    from siyu.flows.housekeeping import housekeeping
    from siyu.flows.sends_track import sends_track
    from siyu.flows.tag_sync import tag_sync

    cohorts: list[int] = []

    def enroll() -> list[Any]:
        state = path_enroll(as_of=_at(DAY, 7, 30), return_state=True)
        cohorts.extend(_cohort_ids())
        return [state]

    def touches() -> list[Any]:
        return [
            path_touch(cohort=c, touch=1, as_of=_at(DAY, 10), return_state=True) for c in cohorts
        ]

    return [
        ("contacts-sync", 24, lambda: [contacts_sync(return_state=True) for _ in range(24)]),
        (
            "tag-sync",
            1,
            lambda: [tag_sync(export_file=str(export), business_date=DAY, return_state=True)],
        ),
        ("path-enroll", 1, enroll),
        # Each cohort gets four touch runs, on four days: in the steady state a day runs four
        # touches per day's cohorts (the figure is set from the measured cohorts below).
        ("path-touch", 4, touches),
        (
            "sends-track",
            96,
            lambda: [
                sends_track(as_of=_at(DAY, 0) + dt.timedelta(minutes=15 * i), return_state=True)
                for i in range(96)
            ],
        ),
        # Six slots a week (Mon/Wed/Fri posts, Tue/Thu games, the Friday big activity).
        (
            "group-cadence",
            6 / 7,
            lambda: [group_cadence(slot="mon-post", as_of=_at(DAY, 10), return_state=True)],
        ),
        ("group-health", 1, lambda: [group_health(date=DAY, return_state=True)]),
        ("rewards-settle", 1, lambda: [rewards_settle(as_of=_at(DAY, 10), return_state=True)]),
        ("housekeeping", 1, lambda: [housekeeping(as_of=_at(DAY, 3), return_state=True)]),
    ]


def _cohort_ids() -> list[int]:
    import sqlalchemy as sa

    from siyu.schemas.conversion import Cohort
    from siyu.schemas.database import make_engine

    engine = make_engine(os.environ["SIYU_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            return list(connection.scalars(sa.select(Cohort.id).order_by(Cohort.id)))
    finally:
        engine.dispose()


def measure(work: Path, customers: int) -> dict[str, Any]:
    """Run a day of siyu's flows against a fresh server; growth per run and per day by flow."""
    from benchmarks.run import _free_port, _sandbox

    prefect_home = work / "prefect"
    prefect_home.mkdir()
    port, sandbox_port = _free_port(), _free_port()
    os.environ.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            # Logs at Prefect's default level (INFO), as production ships them to the API.
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # as siyu's launchers set it
        }
    )
    server = _start_server(prefect_home, port)
    sandbox = _sandbox(sandbox_port, work / "sandbox.db")
    try:
        return _run_day(work, customers, sandbox_port, PrefectDatabase(prefect_home / "prefect.db"))
    finally:
        for proc in (sandbox, server):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _run_day(work: Path, customers: int, sandbox_port: int, db: PrefectDatabase) -> dict[str, Any]:
    import shutil

    import requests

    from siyu.sandbox.sample import SampleSpec, generate
    from siyu.schemas.database import upgrade
    from siyu.schemas.settings import SANDBOX_CORP_ID, SANDBOX_SECRET

    sample = generate(
        SampleSpec(customers=customers, groups=20, managers=5, seed=3, export_date=DAY),
        work / "sample",
    )
    base = f"http://127.0.0.1:{sandbox_port}"
    requests.post(
        f"{base}/sandbox/seed", json={"path": str(sample.seed_dir)}, timeout=600
    ).raise_for_status()
    home = work / "siyu"
    (home / "landing").mkdir(parents=True)
    export = Path(shutil.copy(sample.export_path, home / "landing" / sample.export_path.name))
    os.environ.update(
        {
            "SIYU_HOME": str(home),
            "SIYU_ENVIRONMENT": "embedded",
            "SIYU_DATABASE_URL": f"sqlite:///{home / 'siyu.db'}",
            "SIYU_WECOM_BASE_URL": f"{base}/cgi-bin/",
            "SIYU_PAY_BASE_URL": f"{base}/",
            "SIYU_WECOM_CORP_ID": SANDBOX_CORP_ID,
            "SIYU_WECOM_SECRET": SANDBOX_SECRET,
            "SIYU_MOBILE_SALT": "bench-salt",
        }
    )
    upgrade(os.environ["SIYU_DATABASE_URL"])

    start = db.settled()
    before = start
    rows: list[dict[str, Any]] = []
    for flow_name, per_day, run in _kinds(export):
        t = time.perf_counter()
        try:
            states = run()
            failed = [s.message for s in states if not s.is_completed()]
        except Exception as exc:  # noqa: BLE001 - one kind failing is reported, not fatal
            states, failed = [], [f"{type(exc).__name__}: {exc}"]
        seconds = time.perf_counter() - t
        after = db.settled()
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        runs = len(states)
        if flow_name == "path-touch":
            per_day = 4 * runs  # four touches of each day's cohorts
        total = sum(grown.values())
        events = sum(v for k, v in grown.items() if k in EVENT_TABLES)
        rows.append(
            {
                "flow": flow_name,
                "runs": runs,
                "failed": failed[:2],
                "seconds": round(seconds, 1),
                "bytes": total,
                "event_bytes": events,
                "bytes_per_run": round(total / runs) if runs else None,
                "runs_per_day": round(per_day, 2),
                "bytes_per_day": round(total / runs * per_day) if runs else 0,
                "event_bytes_per_day": round(events / runs * per_day) if runs else 0,
                "top_tables": dict(
                    sorted(((k, v) for k, v in grown.items() if v), key=lambda kv: -kv[1])[:5]
                ),
            }
        )
        before = after
    day = sum(r["bytes_per_day"] for r in rows)
    day_events = sum(r["event_bytes_per_day"] for r in rows)
    lasting = day - day_events
    return {
        "customers": customers,
        "prefect_db_start_bytes": sum(start.values()),
        "per_flow": rows,
        "bytes_per_day": day,
        "event_bytes_per_day": day_events,
        "lasting_bytes_per_day": lasting,
        "flow_runs_per_day": round(sum(r["runs_per_day"] for r in rows), 1),
        # Events go after their retention period; runs, task runs, logs and artifacts stay.
        "year_without_flow_run_vacuum_bytes": 365 * lasting + EVENT_RETENTION_DAYS * day_events,
        "steady_with_90_day_flow_run_vacuum_bytes": 90 * lasting
        + EVENT_RETENTION_DAYS * day_events,
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures BENCHMARKS.md records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="siyu-prefect-growth-") as tmp:
        figures = measure(Path(tmp), args.customers)
    print(f"{'flow':<16}{'runs':>6}{'per run':>14}{'runs/day':>10}{'per day':>14}  top tables")
    for r in figures["per_flow"]:
        per_run = _mb(r["bytes_per_run"]) if r["bytes_per_run"] is not None else "-"
        tables = ", ".join(f"{k} {v / 1e3:,.0f} kB" for k, v in r["top_tables"].items())
        note = f"  FAILED: {r['failed']}" if r["failed"] else ""
        print(
            f"{r['flow']:<16}{r['runs']:>6}{per_run:>14}{r['runs_per_day']:>10}"
            f"{_mb(r['bytes_per_day']):>14}  {tables}{note}"
        )
    print(
        f"a day: {figures['flow_runs_per_day']} flow runs, {_mb(figures['bytes_per_day'])} "
        f"({_mb(figures['event_bytes_per_day'])} of it events, vacuumed after "
        f"{EVENT_RETENTION_DAYS} days)"
    )
    print(
        f"a year without the flow-run vacuum: {_mb(figures['year_without_flow_run_vacuum_bytes'])}"
        f"; steady state with a 90-day flow-run vacuum: "
        f"{_mb(figures['steady_with_90_day_flow_run_vacuum_bytes'])}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
